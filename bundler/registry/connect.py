"""A registry client from the command line's registry options: target, TLS, credentials
(--username with a password read by the caller, else docker's config.json)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler.distribution import Target
from bundler.errors import UsageError
from bundler.progress import OnEvent, no_events
from bundler.reference import ModelName
from bundler.registry import credentials
from bundler.registry.client import Client, Credentials
from bundler.registry.transport import READ_TIMEOUT, TlsOptions, Transport


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """The options every registry command shares (README "Registry options")."""

    plain_http: bool = False
    ca_cert: Path | None = None
    insecure_skip_tls_verify: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password_stdin: bool = False
    timeout: float = READ_TIMEOUT


def connect(url: str, options: RegistryOptions, *, read_password: Callable[[], str],
            env: Mapping[str, str], home: Path, on_event: OnEvent = no_events) -> Client:
    """A client for `url`; `read_password` is called for --password-stdin only."""
    target = Target.parse(url, plain_http=options.plain_http)
    if options.insecure_skip_tls_verify:
        on_event("warning: --insecure-skip-tls-verify: the registry's identity is not checked")
    if (options.client_key is None) != (options.client_cert is None):
        raise UsageError("--client-cert and --client-key go together")
    if options.password_stdin and not options.username:
        raise UsageError("--password-stdin needs --username")
    creds = None
    if options.username:
        if not options.password_stdin:
            raise UsageError("pass the password with --password-stdin, never on the command line")
        creds = Credentials(options.username, read_password())
    else:
        creds = credentials.from_docker_config(target.host, env, home)
    tls = TlsOptions(options.ca_cert, options.client_cert, options.client_key,
                     options.insecure_skip_tls_verify)
    on_event(f"registry: {target.base}" + (f" (namespace {target.namespace})"
                                            if target.namespace else "")
             + (f", as {creds.username}" if creds else ", anonymous"))
    return Client(Transport(tls, read_timeout=options.timeout), target, creds,
                  on_event=on_event)


def clients_for(names: Sequence[str], mirror: str | None, options: RegistryOptions, *,
                read_password: Callable[[], str], env: Mapping[str, str], home: Path,
                on_event: OnEvent = no_events) -> Callable[[ModelName], Client]:
    """One client per registry host (or the mirror for all); --username only for one host."""
    hosts = {ModelName.parse(n).host.lower() for n in names}
    if options.username and mirror is None and len(hosts) > 1:
        raise UsageError("--username applies to one registry; these models come from "
                         f"{len(hosts)}", hint="use docker login for each, or --mirror")
    clients: dict[str, Client] = {}
    scheme = "http://" if options.plain_http else ""

    def client(name: ModelName) -> Client:
        url = mirror or scheme + name.host
        if url not in clients:
            clients[url] = connect(url, options, read_password=read_password, env=env,
                                   home=home, on_event=on_event)
        return clients[url]

    return client
