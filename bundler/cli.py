"""The `bundle` command: parse options, call one use case, draw progress, print the result,
and turn a BundlerError into one error line, a hint and an exit code."""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click

from bundler import (
    __version__,
    config,
    modelkind,
    signing,
    split,
    verify,
)
from bundler.archive import MAX_LEVEL, MIN_LEVEL
from bundler.distribution import parse_listen
from bundler.errors import BundlerError, ExitCode, IntegrityError, NotFoundError, UsageError
from bundler.layout import Base, External, ToolRef, format_created
from bundler.oci import Manifest
from bundler.progress import format_size, plural
from bundler.reader import Head, open_bundle
from bundler.registry import transport
from bundler.store import Store
from bundler.streams import Sink, check_output
from bundler.trust import trusted_keys


class _OnFirstUse:
    """A module imported when a command first uses one of its names, so that start-up (and
    `--version`, `ls`, `verify`) does not load what only other commands run: the registry
    client, the store import, the exporter (README "Performance")."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from tqdm import tqdm

    from bundler import (
        export,
        httpserve,
        inventory,
        ollama_local,
        parity,
        pullcheck,
        push,
        releases,
        serve,
        store_import,
    )
    from bundler.registry import client as registry
    from bundler.registry import connect
    from bundler.registry.connect import RegistryOptions
else:
    export = _OnFirstUse("bundler.export")
    httpserve = _OnFirstUse("bundler.httpserve")
    inventory = _OnFirstUse("bundler.inventory")
    ollama_local = _OnFirstUse("bundler.ollama_local")
    parity = _OnFirstUse("bundler.parity")
    pullcheck = _OnFirstUse("bundler.pullcheck")
    push = _OnFirstUse("bundler.push")
    releases = _OnFirstUse("bundler.releases")
    serve = _OnFirstUse("bundler.serve")
    store_import = _OnFirstUse("bundler.store_import")
    registry = _OnFirstUse("bundler.registry.client")
    connect = _OnFirstUse("bundler.registry.connect")

F = TypeVar("F", bound=Callable[..., Any])

HOME = Path.home()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text for a terminal: control characters (escape sequences, bidi overrides) that a
    bundle, a registry or a file name could carry are shown as escapes, not obeyed."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class Output:
    """Where a command's words go: result on stdout (text or one JSON document), logs on stderr."""

    def __init__(self, *, json_mode: bool, quiet: bool) -> None:
        self.json_mode, self.quiet = json_mode, quiet
        self.to_stderr = False  # the result goes to stderr when stdout carries data

    def log(self, line: str) -> None:
        if not self.quiet or line.startswith("warning:"):
            click.echo(printable(line), err=True)

    def result(self, text: str, doc: dict[str, Any]) -> None:
        if self.json_mode:
            click.echo(json.dumps(doc, indent=2, sort_keys=True), err=self.to_stderr)
        elif not self.quiet:
            click.echo(printable(text), err=self.to_stderr)


    @contextlib.contextmanager
    def progress(self, desc: str, total: int | None = None) -> Iterator[tqdm[Any] | _NoBar]:
        # tqdm draws nothing when quiet or when stderr is no terminal (its disable=None); then
        # it is not even loaded (start-up: README "Performance")
        if self.quiet or (hasattr(sys.stderr, "isatty") and not sys.stderr.isatty()):
            yield _NoBar()
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
            yield bar


class _NoBar:
    """The progress bar where none is drawn."""

    def update(self, n: int) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass


class BundlerGroup(click.Group):
    """The single place where a BundlerError becomes stderr text plus an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BundlerError as e:
            _fail(ctx, e.message, e.hint, e.exit_code)
        except BrokenPipeError:
            ctx.exit(ExitCode.ERROR)
        except OSError as e:  # a backstop: every expected case is a BundlerError already
            where = f" ({e.filename})" if e.filename else ""
            hint = ("free space there, or write somewhere else; nothing that looks complete "
                    "was left" if e.errno == errno.ENOSPC else None)
            _fail(ctx, f"{e.strerror or e}{where}", hint, ExitCode.ERROR)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted; nothing was left half-written", None, ExitCode.ERROR)


def _fail(ctx: click.Context, message: str, hint: str | None, code: int) -> None:
    click.secho(printable(f"error: {message}"), fg="red", err=True)
    if hint:
        click.echo(printable(f"hint: {hint}"), err=True)
    sub = ctx.meta.get("output")
    if isinstance(sub, Output) and sub.json_mode:
        click.echo(json.dumps({"error": message, "hint": hint, "exitCode": int(code)}),
                   err=sub.to_stderr)
    ctx.exit(code)


def common(f: F) -> F:
    f = click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors.")(f)
    return click.option("--json", "json_mode", is_flag=True,
                        help="Print one JSON document describing the result on stdout.")(f)


def _output(json_mode: bool, quiet: bool) -> Output:
    out = Output(json_mode=json_mode, quiet=quiet)
    click.get_current_context().meta["output"] = out
    return out


def registry_options(f: Callable[..., None]) -> Callable[..., None]:
    """The shared registry options, handed to the command as one `options: RegistryOptions`."""

    @functools.wraps(f)
    def command(*args: Any, plain_http: bool, ca_cert: Path | None,
                insecure_skip_tls_verify: bool, client_cert: Path | None,
                client_key: Path | None, username: str | None, password_stdin: bool,
                timeout: float, **kwargs: Any) -> None:
        f(*args, options=connect.RegistryOptions(
            plain_http, ca_cert, insecure_skip_tls_verify, client_cert, client_key, username,
            password_stdin, timeout), **kwargs)

    for option in reversed([
        click.option("--plain-http", is_flag=True,
                     help="Use plain HTTP (as Ollama's --insecure does); implied by http://."),
        click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False),
                     metavar="FILE", help="Trust this CA for the registry's TLS certificate."),
        click.option("--insecure-skip-tls-verify", is_flag=True,
                     help="Do not verify the registry's TLS certificate (warns)."),
        click.option("--client-cert", type=click.Path(path_type=Path, dir_okay=False),
                     metavar="FILE", help="TLS client certificate (mTLS), with --client-key."),
        click.option("--client-key", type=click.Path(path_type=Path, dir_okay=False),
                     metavar="FILE", help="TLS client key, with --client-cert."),
        click.option("--username", metavar="USER",
                     help="Registry user; the password comes from --password-stdin "
                          "(default: docker's config.json, else anonymous)."),
        click.option("--password-stdin", is_flag=True,
                     help="Read the registry password from the first line of stdin."),
        click.option("--timeout", type=click.FloatRange(1, 3600), default=transport.READ_TIMEOUT,
                     show_default=True, metavar="SECONDS",
                     help="Seconds of silence from the registry before a request is given up "
                          "(and retried)."),
    ]):
        command = option(command)
    return command


TRUST = click.option(
    "--trust", "trust", multiple=True, metavar="PUB",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Trust this public key (repeatable), besides every *.pub in the trust directories: "
         "/etc/ollama-bundle/trusted (every user's) and $BUNDLE_TRUST_DIR (default "
         "~/.config/ollama-bundle/trusted).")
MODELS = click.option(
    "--models", "models_dir", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
    help="Ollama model store (default: $OLLAMA_MODELS, else the store of the Ollama service "
         "or desktop app installed here, else ~/.ollama/models).")
PASSPHRASE_FILE = click.option(
    "--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key passphrase from this file (else $BUNDLE_PASSPHRASE, else a prompt).")


@click.group(cls=BundlerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ollama-bundle")
def main() -> None:
    """Carry Ollama models across air gaps as one signed bundle file.

    \b
    Exit codes: 0 success, 1 other error, 2 usage, 3 integrity (signature,
    digest, size, format), 4 not found (model, file, key, store), 5 network.
    """


# ---------------------------------------------------------------------------------------------
# keygen


def _passphrase(path: Path | None, *, confirm: bool, what: str) -> bytes | None:
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except FileNotFoundError:
            raise NotFoundError(f"passphrase file not found: {path}") from None
    env = os.environ.get("BUNDLE_PASSPHRASE")
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        return None
    value: str = click.prompt(f"Passphrase for {what}", hide_input=True,
                              confirmation_prompt=confirm, err=True)
    return value.encode()


@main.command()
@click.option("--out", "prefix", type=click.Path(path_type=Path, dir_okay=False),
              metavar="PREFIX",
              help="Write PREFIX.key and PREFIX.pub (default: ~/.config/ollama-bundle/signing).")
@click.option("--no-passphrase", is_flag=True, help="Leave the private key unencrypted.")
@PASSPHRASE_FILE
@common
def keygen(prefix: Path | None, no_passphrase: bool, passphrase_file: Path | None,
           json_mode: bool, quiet: bool) -> None:
    """Make an ECDSA P-256 signing key pair; print its key id."""
    out = _output(json_mode, quiet)
    if no_passphrase and passphrase_file:
        raise UsageError("--no-passphrase and --passphrase-file contradict each other")
    prefix = prefix or config.default_key_prefix(os.environ, HOME)
    passphrase = None
    if not no_passphrase:
        passphrase = _passphrase(passphrase_file, confirm=True, what="the new key")
        if not passphrase:
            raise UsageError("no passphrase for the new key",
                             hint="use --passphrase-file FILE, BUNDLE_PASSPHRASE, a terminal "
                                  "prompt, or --no-passphrase")
    key = signing.generate()
    key_path, pub_path = signing.write_key_pair(prefix, key, passphrase)
    out.result(
        f"key id {key.public.keyid}\nprivate key {key_path} (keep it secret)\n"
        f"public key  {pub_path} (copy it into the trust directory of every importer)",
        {"keyid": key.public.keyid, "privateKey": str(key_path), "publicKey": str(pub_path),
         "encrypted": passphrase is not None})


# ---------------------------------------------------------------------------------------------
# export


@contextlib.contextmanager
def _stdout() -> Iterator[Sink]:
    yield sys.stdout.buffer
    sys.stdout.buffer.flush()


@main.command("export")
@click.argument("names", nargs=-1, metavar="MODEL...")
@click.option("--all", "all_models", is_flag=True, help="Export every model in the store.")
@click.option("-o", "--output", required=True, metavar="OUT",
              help="Bundle file to write (written under a temporary name, renamed when "
                   "complete), or - for stdout.")
@MODELS
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False), metavar="KEY",
              multiple=True,
              help="Sign with this private key (repeatable for several signers; default: the "
                   "key 'bundle keygen' made, ~/.config/ollama-bundle/signing.key).")
@click.option("--unsigned", is_flag=True, help="Write an unsigned bundle.")
@click.option("--level", type=click.IntRange(MIN_LEVEL, MAX_LEVEL), default=None, metavar="N",
              help="Compress every member at this zstd level (default: weights, which barely "
                   "compress, are stored as raw zstd blocks; JSON and text at level 3; "
                   "formats/bundle-v1.md §7).")
@click.option("--from-registry", is_flag=True,
              help="Fetch MODEL... from their registry (registry.ollama.ai unless the name has "
                   "a host) instead of a store; no Ollama needed.")
@click.option("--mirror", metavar="URL",
              help="With --from-registry: fetch from this registry instead of the names' hosts "
                   "(a namespace in URL maps names as --to-registry does; the names in the "
                   "bundle stay as given).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              metavar="DIR", help="With --from-registry: keep downloaded blobs here; a re-run "
                                  "continues partial downloads and skips finished ones.")
@click.option("--split", "split_size", metavar="SIZE",
              help="Write OUT.001, OUT.002, ... of at most SIZE bytes each, for removable "
                   "media: fat32 (4 GiB - 1), dvd (4.7 GB), dvd-dl, bd25, bd50, or a size "
                   "such as 4GiB, 4GB, 700MB; plus OUT.parts.json.")
@click.option("--parity", "parity_percent", type=click.IntRange(1, 100), metavar="PERCENT",
              help="Also write par2 repair data of PERCENT % of each file (OUT.NNN.par2, "
                   "OUT.NNN.vol*.par2), for 'bundle repair'; needs the par2 tool.")
@click.option("--verify-after-write", is_flag=True,
              help="Read back what was written and verify it, as 'bundle verify' does.")
@click.option("--base", "bases", multiple=True, metavar="FILE",
              type=click.Path(path_type=Path, dir_okay=False),
              help="Make a delta bundle: leave out every config and layer this earlier bundle "
                   "or inventory (from 'bundle inventory') has (repeatable).")
@click.option("--with-tool", "with_tool", is_flag=False, flag_value="", default=None,
              metavar="[FILE]",
              help="Carry this tool in the bundle, as the PEX FILE, whose name must end in "
                   ".pex (default: the PEX this runs from, else dist/ollama-bundle-VERSION.pex "
                   "from scripts/build-pex), for the air-gapped side (formats/bundle-v1.md "
                   "§11; versions of this tool older than this option refuse such a bundle). "
                   "Without FILE, put it after the model names or before another option.")
@registry_options
@PASSPHRASE_FILE
@common
def export_cmd(names: tuple[str, ...], all_models: bool, output: str, models_dir: Path | None,
               key_path: tuple[Path, ...], unsigned: bool, level: int | None,
               from_registry: bool, mirror: str | None, cache_dir: Path | None,
               split_size: str | None, parity_percent: int | None, verify_after_write: bool,
               bases: tuple[Path, ...], with_tool: str | None,
               passphrase_file: Path | None, json_mode: bool, quiet: bool,
               options: RegistryOptions) -> None:
    """Export models from an Ollama store (or a registry) into one signed bundle file.

    MODEL is an Ollama name (tiny, tiny:chat, hf.co/org/repo:Q4_K_M); or pass --all.
    """
    out = _output(json_mode, quiet)
    if with_tool and not with_tool.endswith(".pex"):  # a model name after --with-tool
        raise UsageError(f"--with-tool {with_tool}: FILE must be a PEX file named *.pex",
                         hint="to carry the default tool, put --with-tool after the model names "
                              "(bundle export MODEL... --with-tool -o OUT)")
    if bool(names) == all_models:
        raise UsageError("name the models to export, or pass --all (not both)")
    if unsigned and key_path:
        raise UsageError("--unsigned and --key contradict each other")
    part_size = None if split_size is None else split.parse_size(split_size)
    if output == "-" and (part_size is not None or verify_after_write or parity_percent):
        raise UsageError("--split, --parity and --verify-after-write need -o FILE, not stdout")
    if parity_percent:
        parity.require()  # before the export, not after an hour of it
    if output == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write a bundle to a terminal",
                             hint="redirect stdout to a file or a pipe, or use -o FILE")
        out.to_stderr = True  # stdout carries the bundle
    else:
        check_output(Path(output))
    keys = [] if unsigned else _signing_keys(key_path, passphrase_file)
    tool = None
    if with_tool is not None:
        tool = export.carried_tool(Path(with_tool) if with_tool
                                   else export.default_tool(os.environ))
    have = releases.read_bases(bases, [])
    if from_registry:
        if all_models or models_dir is not None:
            raise UsageError("--from-registry takes model names, not --all or --models")
        clients = connect.clients_for(names, mirror, options, read_password=_read_password,
                                      env=os.environ, home=HOME, on_event=out.log)
        plan = export.plan_registry_export(names, clients, cache=cache_dir, have=have)
    else:
        if mirror is not None or cache_dir is not None:
            raise UsageError("--mirror and --cache go with --from-registry")
        store = Store(ollama_local.locate_store(models_dir, os.environ, HOME))
        out.log(f"store: {store.location.describe()}")
        plan = export.plan_export(store, names, all_models=all_models, have=have,
                                  on_event=out.log)
    settings = export.WriteOptions(
        tuple(keys), level, config.source_date_epoch(os.environ), tool, part_size,
        parity_percent, verify_after_write)
    if output == "-":
        with _stdout() as f:
            written = export.write_bundle(plan, f, settings, meters=out.progress)
    else:
        written = export.write_bundle(plan, output, settings, meters=out.progress,
                                      on_event=out.log)
    result = written.result
    lines = [f"  {m.name.display_shortest():40} {m.manifest.digest.short}  "
             f"{format_size(m.manifest.total_size)}" for m in result.models]
    signed = ("signed by " + ", ".join(k[:16] for k in result.signers)
              if result.signers else "UNSIGNED")
    summary = (f"wrote {output}: {plural(len(result.models), 'model')}, "
               f"{plural(result.blobs, 'blob')}, "
               f"{format_size(result.bytes_in)}, {signed}")
    if written.parts:
        summary += "\n" + "\n".join(f"  {p.name}  {format_size(p.size)}  {p.digest}"
                                     for p in written.parts)
    out.result("\n".join([summary, *lines, *_tool_text(result.tool_file),
                          *_delta_text(plan.contents.bases, plan.contents.external)]),
               written.to_json())


def _tool_text(tool: ToolRef | None) -> list[str]:
    if tool is None:
        return []
    return [f"tool: {tool.member} ({format_size(tool.blob.size)}, {tool.blob.digest}), "
            + "never run by import"]


def _delta_text(bases: Sequence[Base], external: Sequence[External]) -> list[str]:
    if not bases:
        return []
    left_out = format_size(sum(e.blob.size for e in external))
    head = (f"delta: {plural(len(external), 'blob')} ({left_out}) left out, which the target must "
            "already have:")
    lines = [head]
    for i, b in enumerate(bases):
        n = [e for e in external if e.base == i]
        lines.append(f"  {len(n):4} from {b.describe()}")
    return lines


def _signing_keys(paths: tuple[Path, ...], passphrase_file: Path | None) -> list[signing.PrivateKey]:
    if not paths:
        default = Path(f"{config.default_key_prefix(os.environ, HOME)}.key")
        if not default.exists():
            raise NotFoundError(
                f"no signing key: {default} does not exist",
                hint="make one with 'bundle keygen', pass --key KEY, or pass --unsigned")
        paths = (default,)
    def ask(path: Path) -> Callable[[], bytes | None]:
        return lambda: _passphrase(passphrase_file, confirm=False, what=str(path))

    return [signing.read_private(path, ask(path)) for path in paths]


# ---------------------------------------------------------------------------------------------
# ls, verify, import


def _resolve_bundle(args: tuple[str, ...]) -> str:
    """One bundle from what was given: a file; the first part of a split bundle, its parts (a
    shell glob) or the directory holding them; a quoted glob; - for stdin."""
    if args == ("-",):
        return "-"
    found: list[str] = []
    for arg in args:
        path = Path(arg)
        if any(c in arg for c in "*?[") and not path.exists():
            matches = sorted(str(m) for m in path.parent.glob(path.name))
            if not matches:
                raise NotFoundError(f"no file matches {arg}")
            found += matches
        elif path.is_dir():
            inside = (sorted(str(m) for m in path.glob("*.001"))
                      or sorted(str(m) for m in path.glob("*.tar.zst")))
            if len(inside) != 1:
                raise UsageError(f"{arg} is a directory holding {len(inside)} bundles",
                                 hint="name the bundle file, or its first part NAME.001")
            found += inside
        else:
            found.append(arg)
    firsts = [f for f in found if split.is_first_part(Path(f).name)]
    if len(firsts) == 1:
        return firsts[0]
    if len(found) == 1:
        return found[0]
    raise UsageError(f"{plural(len(found), 'file')} given; name one bundle",
                     hint="a bundle file, or the first part of a split bundle (NAME.001)")


@contextlib.contextmanager
def _open_bundle(path: str) -> Iterator[BinaryIO]:
    # Unbuffered (FileIO): the decompressing thread may be left blocked in a read of a stalled
    # pipe after Ctrl-C, and a BufferedReader's lock would then abort interpreter shutdown.
    if path == "-":
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError):  # not a real file (e.g. a test runner's stdin)
            yield sys.stdin.buffer
            return
        with open(fd, "rb", buffering=0, closefd=False) as stdin:
            yield stdin
        return
    with open_bundle(Path(path)) as f:
        yield f


def _signers_text(head: Head) -> str:
    s = head.signatures
    if not s.carried:
        return "signatures: none (unsigned bundle)"
    parts = [f"{k[:16]} ({'trusted' if k in s.trusted else 'not trusted'})" for k in s.carried]
    return "signatures: " + ", ".join(parts)


def _models_table(head: Head) -> list[str]:
    rows = [f"  {'NAME':40} {'ID':12}  {'SIZE':>9}  LAYERS"]
    for m in head.models:
        kinds = _layer_kinds(m.manifest)
        rows.append(f"  {m.name.display_shortest():40} {m.manifest.digest.short}  "
                    f"{format_size(m.manifest.total_size):>9}  {kinds}")
    return rows


def _layer_kinds(manifest: Manifest) -> str:
    """The layers' kinds; a tensor model's (hundreds of tensors) counted, and named as one."""
    kinds = [layer.media_type.rsplit(".", 1)[-1] for layer in manifest.layers]
    if modelkind.weights(manifest) != "tensor":
        return ",".join(kinds)
    others = ",".join(dict.fromkeys(k for k in kinds if k != "tensor"))
    return f"tensor model: {kinds.count('tensor')} tensors" + (f" + {others}" if others else "")


@main.command("ls")
@click.argument("bundle_path", metavar="BUNDLE", nargs=-1, required=True,
                callback=lambda _c, _p, v: _resolve_bundle(v))
@TRUST
@common
def ls_cmd(bundle_path: str, trust: tuple[Path, ...], json_mode: bool, quiet: bool) -> None:
    """List a bundle's models, signers and totals (reads the head, and with the seek table
    only the file's last frames to check that it is whole; exit 3 if it is truncated)."""
    out = _output(json_mode, quiet)
    keys = trusted_keys(trust, os.environ, HOME, out.log)
    with _open_bundle(bundle_path) as f:  # the head is in part 1, the end in the last
        head = verify.list_bundle(f, keys)
    title = (f"{bundle_path}: created {head.root.created} by {head.root.tool_name} "
             f"{head.root.tool_version}")
    total = (f"total: {plural(len(head.models), 'model')}, "
             f"{plural(len(head.root.blobs), 'blob')}, "
             f"{format_size(head.root.total_size)}")
    out.result("\n".join([title, _signers_text(head), *_models_table(head), total,
                          *_tool_text(head.root.tool_file),
                          *_delta_text(head.root.bases, head.root.external)]),
               head.to_json())


@main.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", nargs=-1, required=True,
                callback=lambda _c, _p, v: _resolve_bundle(v))
@TRUST
@click.option("--allow-unsigned", is_flag=True,
              help="Accept a bundle without a trusted signature (digests are still checked).")
@click.option("--parts-only", is_flag=True,
              help="For a split bundle: check the signed head and each part's size and sha256 "
                   "only (quick, e.g. right after copying to a USB stick).")
@common
def verify_cmd(bundle_path: str, trust: tuple[Path, ...], allow_unsigned: bool,
               parts_only: bool, json_mode: bool, quiet: bool) -> None:
    """Check the signature and every digest and size; write nothing.

    BUNDLE is a bundle file, or a split bundle: its first part NAME.001, its parts (NAME.*)
    or their directory.
    """
    out = _output(json_mode, quiet)
    keys = trusted_keys(trust, os.environ, HOME, out.log)
    if parts_only:
        with out.progress("parts") as bar:
            checked = verify.verify_parts(Path(bundle_path), keys, allow_unsigned=allow_unsigned,
                                          on_total=lambda n: bar.reset(total=n),
                                          on_bytes=bar.update, on_event=out.log)
        out.result(f"OK {bundle_path}: {_signers_text(checked.head)}; "
                   f"{plural(len(checked.parts), 'part')}, sizes and sha256 as the signed head lists them (blobs not checked)",
                   checked.to_json())
        return
    with _open_bundle(bundle_path) as f, out.progress("verify") as bar:
        result = verify.verify_bundle(f, keys, allow_unsigned=allow_unsigned,
                                      on_total=lambda n: bar.reset(total=n), on_bytes=bar.update,
                                      on_event=out.log)
    tool = result.head.root.tool_file
    carried = "" if tool is None else f"; tool {tool.member} verified"
    out.result(f"OK {bundle_path}: {_signers_text(result.head)}; "
               f"{plural(result.verified_blobs, 'blob')}, "
               f"{format_size(result.verified_bytes)} verified{carried}", result.to_json())


@main.command("import")
@click.argument("bundle_path", metavar="BUNDLE", nargs=-1, required=True,
                callback=lambda _c, _p, v: _resolve_bundle(v))
@MODELS
@TRUST
@click.option("--allow-unsigned", is_flag=True,
              help="Accept a bundle without a trusted signature (digests are still checked).")
@click.option("--only", multiple=True, metavar="MODEL",
              help="Import only this model (repeatable).")
@click.option("--dry-run", is_flag=True,
              help="Check the signature and plan, report what would change, write nothing.")
@click.option("--allow-downgrade", is_flag=True,
              help="Replace models even with ones from a release older than the one that "
                   "wrote them (refused by default: a replayed old release).")
@click.option("--to-registry", "registry_url", metavar="URL",
              help="Push the models into this registry instead of a store: "
                   "[http://|https://]host[:port][/namespace].")
@click.option("--jobs", type=click.IntRange(1, 32), default=config.DEFAULT_JOBS,
              show_default=True,
              help="With --to-registry: uploads in flight (blobs read on their own through "
                   "the bundle's seek table; from a pipe, one upload at a time).")
@click.option("--no-server-check", is_flag=True,
              help="Do not ask the Ollama server on this machine (OLLAMA_HOST, else "
                   "127.0.0.1:11434) whether it lists the imported models.")
@registry_options
@common
def import_cmd(bundle_path: str, models_dir: Path | None, trust: tuple[Path, ...],
               allow_unsigned: bool, only: tuple[str, ...], dry_run: bool,
               allow_downgrade: bool, registry_url: str | None, jobs: int,
               no_server_check: bool, json_mode: bool, quiet: bool,
               options: RegistryOptions) -> None:
    """Verify a bundle and write its models into an Ollama model store, or push them into a
    registry (--to-registry)."""
    out = _output(json_mode, quiet)
    keys = trusted_keys(trust, os.environ, HOME, out.log)
    if registry_url is not None:
        if models_dir is not None or dry_run:
            raise UsageError("--to-registry goes with neither --models nor --dry-run")
        _push(bundle_path, registry_url, keys, allow_unsigned, only, jobs, out, options)
        return
    store = Store(ollama_local.locate_store(models_dir, os.environ, HOME))
    out.log(f"store: {store.location.describe()}")
    with _open_bundle(bundle_path) as f, out.progress("import") as bar:
        result = store_import.import_bundle(
            f, store, keys, allow_unsigned=allow_unsigned, only=only, dry_run=dry_run,
            allow_downgrade=allow_downgrade,
            on_total=lambda n: bar.reset(total=n), on_bytes=bar.update, on_event=out.log)
    verb = "would write" if dry_run else "wrote"
    lines = [f"{'DRY RUN: ' if dry_run else ''}{_signers_text(result.head)}"]
    tensor = 0
    for c in result.changes:
        note = f" (was {c.previous.short})" if c.previous else ""
        if modelkind.weights(c.model.manifest) == "tensor":
            tensor += 1
            note += "  tensor model"
        lines.append(f"  {c.action:9} {c.target.display_shortest():40} "
                     f"{c.model.manifest.digest.short}{note}")
    lines.append(f"{verb} {plural(result.blobs_written, 'blob')} "
                 f"({format_size(result.bytes_written)}), "
                 f"{result.blobs_present} already present, into {result.store}")
    if result.blobs_kept:
        lines.append(f"kept {plural(result.blobs_kept, 'staged blob')} "
                     f"({format_size(result.bytes_kept)}) from an interrupted import")
    if tensor:
        lines.append(f"note: {plural(tensor, 'tensor model')} (safetensors): Ollama runs them only "
                     "where its MLX runtime loads; elsewhere they are listed but do not run")
    check = None
    if not (dry_run or no_server_check) and result.changes:
        check = ollama_local.check_server(os.environ, {
            c.target.display_shortest(): c.model.manifest.digest.hex for c in result.changes})
        lines += _server_text(check, out, restart=bool(result.old_blob_names))
    out.result("\n".join(lines), {**result.to_json(),
                                  "server": None if check is None else check.to_json()})


def _server_text(check: ollama_local.ServerCheck, out: Output, *, restart: bool) -> list[str]:
    """What the local server's list says of the import (formats/ollama-store.md §1.1)."""
    if check.seen is None:
        out.log(f"server check: {check.problem}" + (f" at {check.url}" if check.url else "")
                + "; not checked")
        return []
    s = check.seen
    if not (s.missing or s.other):
        return [f"the Ollama server at {check.url} lists the imported models"]
    why = ("it reads another store (another user's, or OLLAMA_MODELS set for the server), "
           + ("or it needs a restart to see old blob names, " if restart else "")
           + "so these models are not where it looks")
    if s.missing:
        out.log(f"warning: the Ollama server at {check.url} does not list "
                f"{', '.join(s.missing)}: {why}")
    if s.other:
        out.log(f"warning: the Ollama server at {check.url} lists {', '.join(s.other)} with "
                f"another manifest: {why}")
    out.log("hint: import again with --models DIR, DIR being the store that server uses "
            "(see 'Which store' in the README)")
    bad, total = len(s.missing) + len(s.other), len(s.listed) + len(s.missing) + len(s.other)
    return [f"the Ollama server at {check.url} does NOT list {bad} of the {total} models"]


def _client(url: str, out: Output, options: RegistryOptions) -> registry.Client:
    return connect.connect(url, options, read_password=_read_password, env=os.environ,
                           home=HOME, on_event=out.log)


def _read_password() -> str:
    """--password-stdin: the first line of stdin."""
    return sys.stdin.readline().rstrip("\r\n")


def _push(bundle_path: str, url: str, keys: Sequence[signing.PublicKey], allow_unsigned: bool,
          only: tuple[str, ...], jobs: int, out: Output, options: RegistryOptions) -> None:
    client = _client(url, out, options)
    with _open_bundle(bundle_path) as f, out.progress("push") as bar:
        result = push.push_bundle(f, client, keys, allow_unsigned=allow_unsigned, only=only,
                                  jobs=jobs,
                                  on_total=lambda n: bar.reset(total=n), on_bytes=bar.update,
                                  on_event=out.log)
    checked = pullcheck.check_pushed(client, result.items)
    lines = [_signers_text(result.head)]
    lines += [f"  {i.model.name.display_shortest():40} -> {i.pull_name(client.target)}"
              + ("  (renamed: registries want lowercase)" if i.renamed(client.target) else "")
              for i in result.items]
    lines.append(f"uploaded {plural(result.uploaded, 'blob')} "
                 f"({format_size(result.uploaded_bytes)}), "
                 f"{result.present} already there, {result.mounted} mounted")
    if result.head.registry_signatures:
        lines.append(f"cosign signatures: {result.cosign_signatures} added to sha256-<digest>.sig"
                     f" tags (signers {', '.join(d.keyid[:16] for d in result.head.registry_signatures)})")
    lines += [line for c in checked.checks for line in _check_text(c)]
    if checked.checks:
        lines.append(pullcheck.probed_text(len(checked.checks), len(result.items),
                                           "pushed models"))
    lines += ["colleagues pull with:", *(f"  {c}" for c in result.commands)]
    lines += [f"  note for {n}: {note}" for n, note in checked.case_notes.items()]
    out.result("\n".join(lines), checked.to_json(result.to_json()))


def _check_text(check: pullcheck.RegistryCheck | None) -> list[str]:
    if check is None:
        return []
    verdict = ("`ollama pull` will work from here" if check.ok
               else "`ollama pull` will NOT work from here")
    return [f"check {check.model}: {verdict}", *(f"  - {x}" for x in check.findings),
            *(f"  fix: {x}" for x in check.advice),
            *([f"  note: {check.note}"] if check.note else [])]


@main.command("repair")
@click.argument("bundle_path", metavar="BUNDLE", nargs=-1, required=True,
                callback=lambda _c, _p, v: _resolve_bundle(v))
@common
def repair_cmd(bundle_path: str, json_mode: bool, quiet: bool) -> None:
    """Repair a damaged bundle file or parts in place from the par2 data that
    'export --parity' wrote beside them.

    BUNDLE is a bundle file or a split bundle (NAME.001, its parts, or their directory).
    Exit code 0 if every file is intact or was repaired, 3 otherwise; also 3, before
    anything is written, if a recovery file names any other file, or a file is a link.
    """
    out = _output(json_mode, quiet)
    if bundle_path == "-":
        raise UsageError("repair works on files, not stdin")
    results = parity.repair(parity.bundle_files(Path(bundle_path)))
    out.result("\n".join(f"  {r.name:40} {r.state}" for r in results),
               {"files": [{"name": r.name, "state": r.state} for r in results]})
    damaged = [r.name for r in results if r.state == "beyond repair"]
    if damaged:
        raise IntegrityError(f"{', '.join(damaged)}: too damaged to repair",
                             hint="copy those files again from the release medium")
    out.log(f"next: bundle verify {bundle_path}")


@main.command("inventory")
@MODELS
@click.option("--registry", "registry_url", metavar="URL",
              help="Inventory this registry (every tag it lists) instead of a store.")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Inventory file to write (renamed into place when complete), or - for "
                   "stdout.")
@registry_options
@common
def inventory_cmd(models_dir: Path | None, registry_url: str | None, output: str,
                  json_mode: bool, quiet: bool, options: RegistryOptions) -> None:
    """Write what a store (or registry) holds, to carry back out for delta bundles
    (export --base FILE).

    The inventory is small, human-readable JSON (formats/inventory-v1.md).
    """
    out = _output(json_mode, quiet)
    epoch = config.source_date_epoch(os.environ)
    created = format_created(int(time.time()) if epoch is None else epoch)
    if registry_url is not None:
        if models_dir is not None:
            raise UsageError("--registry and --models exclude each other")
        client = _client(registry_url, out, options)
        inv = releases.inventory_registry(client, created, on_event=out.log)
    else:
        store = Store(ollama_local.locate_store(models_dir, os.environ, HOME))
        out.log(f"store: {store.location.describe()}")
        inv = releases.inventory_store(store, created, on_event=out.log)
    if output == "-":
        out.to_stderr = True
        sys.stdout.buffer.write(inv.to_bytes())
        sys.stdout.flush()
    else:
        releases.write_inventory(inv, Path(output))
    size = sum(b.size for b in inv.blobs)
    out.result(f"wrote {output}: {plural(len(inv.models), 'model')}, "
               f"{plural(len(inv.blobs), 'blob')} "
               f"({format_size(size)}) in {inv.source}",
               {"output": output, "source": inv.source, "created": inv.created,
                "models": len(inv.models), "blobs": len(inv.blobs), "bytes": size})


@main.command("diff")
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
@common
def diff_cmd(old: Path, new: Path, json_mode: bool, quiet: bool) -> None:
    """Compare two releases (bundles or inventories): models added, removed and changed,
    and the bytes a delta of NEW against OLD would carry."""
    out = _output(json_mode, quiet)
    a, b = releases.release_of(old, []), releases.release_of(new, [])
    d = inventory.diff(a, b)
    lines = [f"{a.label} -> {b.label}"]
    lines += [f"  + {n}  {b.models[n].short}" for n in d.added]
    lines += [f"  - {n}  {a.models[n].short}" for n in d.removed]
    lines += [f"  ~ {n}  {a.models[n].short} -> {b.models[n].short}" for n in d.changed]
    lines.append(f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, "
                 f"{d.unchanged} unchanged; new: {plural(d.new_blobs, 'blob')}, "
                 f"{format_size(d.new_bytes)}")
    out.result("\n".join(lines), {"old": a.label, "new": b.label, **d.to_json()})


@main.command("check-registry")
@click.argument("url")
@click.argument("names", nargs=-1, metavar="[MODEL...]")
@registry_options
@common
def check_registry_cmd(url: str, names: tuple[str, ...], json_mode: bool, quiet: bool,
                       options: RegistryOptions) -> None:
    """Probe a registry the way `ollama pull` does (anonymously) and say whether pulls will
    work.

    MODEL is namespace/model:tag spelt as colleagues pull it (a namespace in URL replaces
    the name's); default: every model tag under URL's namespace (cosign signature tags are
    not models), at most 100. Exit code 0 if every probed model would pull, 5 otherwise.
    """
    out = _output(json_mode, quiet)
    client = _client(url, out, options)
    targets, found = pullcheck.check_targets(client, names)
    checks = [pullcheck.check_registry(client, repo, tag) for repo, tag in targets]
    text = [line for c in checks for line in _check_text(c)]
    if not names:
        text.append(pullcheck.probed_text(len(checks), found, "model tags") + " under "
                    f"{client.target.base}/{client.target.namespace or ''}")
    out.result("\n".join(text), {"registry": client.target.base,
                                  "namespace": client.target.namespace,
                                  "modelTags": found, "probed": len(checks),
                                  "limit": pullcheck.MAX_PROBES,
                                  "checks": [c.to_json() for c in checks]})
    pullcheck.require_pulls(checks)




# ---------------------------------------------------------------------------------------------
# serve


def _listen(_c: click.Context, _p: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_listen(value, serve.DEFAULT_PORT)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command("serve")
@click.argument("bundles", metavar="BUNDLE...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--listen", "listen", default=f"127.0.0.1:{config.SERVE_PORT}", show_default=True,
              metavar="HOST:PORT", callback=_listen,
              help="Address to listen on (0.0.0.0 for every interface; port 0: any free one).")
@click.option("--namespace", metavar="NS",
              help="Serve every model under this namespace (as a namespace in the URL of "
                   "import --to-registry does); default: each model's own.")
@TRUST
@click.option("--allow-unsigned", is_flag=True,
              help="Serve a bundle without a trusted signature (digests are still checked).")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Serve HTTPS with this PEM certificate (chain), with --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="The PEM private key of --tls-cert.")
@click.option("--htpasswd", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Require Basic credentials from this file (htpasswd -s). Ollama cannot pull "
                   "through it: it never sends Basic credentials. For other OCI clients only.")
@click.option("--access-log", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Append the access log (Common Log Format) to FILE instead of stderr.")
@click.option("--max-connections", type=click.IntRange(1, 1024), default=config.MAX_CONNECTIONS,
              show_default=True, help="Connections served at once.")
@click.option("--max-per-client", type=click.IntRange(1, 1024), default=config.MAX_PER_CLIENT,
              show_default=True, help="Connections served at once to one client address "
                                      "(Ollama opens 16 per blob).")
@click.option("--drain-timeout", type=click.FloatRange(0, 86400),
              default=config.DRAIN_TIMEOUT, show_default=True, metavar="SECONDS",
              help="On SIGTERM, how long downloads in progress may take to finish.")
@common
def serve_cmd(bundles: tuple[Path, ...], listen: tuple[str, int], namespace: str | None,
              trust: tuple[Path, ...], allow_unsigned: bool, tls_cert: Path | None,
              tls_key: Path | None, htpasswd: Path | None, access_log: Path | None,
              max_connections: int, max_per_client: int, drain_timeout: float,
              json_mode: bool, quiet: bool) -> None:
    """Serve bundles read-only over the Distribution API, for `ollama pull`.

    BUNDLE is a bundle file, the first part of a split bundle, or a directory (every
    *.tar.zst and *.001 in it, looked for again on SIGHUP). Every signature is checked as
    import checks it before the port opens; each blob's digest the first time it is read.
    Colleagues run the printed `ollama pull --insecure HOST:PORT/...` commands. SIGTERM
    lets downloads in progress finish, then exits; SIGHUP re-reads the bundles.
    """
    out = _output(json_mode, quiet)
    keys = trusted_keys(trust, os.environ, HOME, out.log)
    options = serve.ServeOptions(listen[0], listen[1], namespace, allow_unsigned, tls_cert,
                                 tls_key, htpasswd, httpserve.Limits(max_connections, max_per_client),
                                 drain_timeout)
    with contextlib.ExitStack() as stack:
        log = (stack.enter_context(access_log.open("a", encoding="utf-8", buffering=1))
               if access_log is not None else sys.stderr)

        live = sys.stderr.isatty() and not quiet and not json_mode  # the live status line
        clear = "\r\x1b[K" if live else ""

        def access(line: str) -> None:
            print((clear if log is sys.stderr else "") + line, file=log, flush=True)

        def event(line: str) -> None:
            sys.stderr.write(clear)  # (the live line, if any, is drawn again next time)
            out.log(line)

        def stats(s: httpserve.Stats) -> None:
            sys.stderr.write(f"{clear}{plural(s.connections, 'connection')}, "
                             f"{plural(s.answering, 'answer')} in progress, "
                             f"{format_size(s.sent)} served")
            sys.stderr.flush()

        def ready(r: serve.Ready) -> None:
            out.result("\n".join([f"serving {plural(len(r.models), 'model')} at {r.url}",
                                   *(m.to_json(r.host, r.insecure)["pull"] for m in r.models)]),
                       r.to_json() if json_mode else {})

        serve.serve(bundles, keys, options, on_ready=ready, access=access,
                    on_event=event,
                    on_stats=stats if live else None)
