"""Which store the Ollama on this machine uses (formats/ollama-store.md §1): the pure rules of
bundler/discover.py over generated systemd units, /etc/passwd and app settings, the adapter
over a directory standing in for /, and the check against a server's /api/tags."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePath

import pytest

from bundler import discover
from bundler.ollama_local import locate_store, read_service
from bundler.store import Store, StoreLocation
from tests.support.common import Keys, run

INSTALL_SH_UNIT = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

[Install]
WantedBy=default.target
"""  # the unit Ollama's scripts/install.sh writes
USERS_FILE = ("root:x:0:0:root:/root:/bin/bash\n"
          "ollama:x:998:998::/usr/share/ollama:/bin/false\n")


def test_unit_files_order_and_masking() -> None:
    present = ["/usr/lib/systemd/system/ollama.service",
               "/etc/systemd/system/ollama.service",
               "/usr/lib/systemd/system/ollama.service.d/20-models.conf",
               "/etc/systemd/system/ollama.service.d/20-models.conf",
               "/run/systemd/system/ollama.service.d/10-a.conf",
               "/etc/systemd/system/ollama.service.d/override.conf",
               "/etc/systemd/system/ollama.service.d/notes.txt"]
    assert discover.unit_files(present) == [
        "/etc/systemd/system/ollama.service",
        "/run/systemd/system/ollama.service.d/10-a.conf",
        "/etc/systemd/system/ollama.service.d/20-models.conf",
        "/etc/systemd/system/ollama.service.d/override.conf",
    ]
    assert discover.unit_files(present[2:3]) == []  # drop-ins without a unit: no service


def test_service_store_from_user_home() -> None:
    service = discover.parse_service([("/etc/systemd/system/ollama.service", INSTALL_SH_UNIT)])
    store, source = discover.service_store(service, USERS_FILE) or ("", "")
    assert store == "/usr/share/ollama/.ollama/models"
    assert "User=ollama" in source


def test_dropin_environment_wins_and_is_trimmed_like_ollama() -> None:
    override = ('# systemctl edit ollama\n[Service]\n'
                'Environment="OLLAMA_HOST=0.0.0.0" "OLLAMA_MODELS= \'/data/ollama models\' "\n')
    later = "[Service]\nEnvironment=OLLAMA_KEEP_ALIVE=1h \\\n  OLLAMA_DEBUG=1\n"
    service = discover.parse_service([
        ("/etc/systemd/system/ollama.service", INSTALL_SH_UNIT),
        ("/etc/systemd/system/ollama.service.d/override.conf", override),
        ("/etc/systemd/system/ollama.service.d/zz.conf", later)])
    assert service.environment["OLLAMA_DEBUG"][0] == "1"
    store, source = discover.service_store(service, USERS_FILE) or ("", "")
    assert store == "/data/ollama models"
    assert source == ("Environment=OLLAMA_MODELS in "
                      "/etc/systemd/system/ollama.service.d/override.conf")


def test_empty_environment_clears_and_other_sections_do_not_count() -> None:
    unit = INSTALL_SH_UNIT.replace("[Install]", "[Install]\nEnvironment=OLLAMA_MODELS=/nope")
    reset = "[Service]\nEnvironment=OLLAMA_MODELS=/first\nEnvironment=\nUser=\n"
    service = discover.parse_service([("/u", unit), ("/d.conf", reset)])
    assert "OLLAMA_MODELS" not in service.environment and service.user is None
    store, source = discover.service_store(service, USERS_FILE) or ("", "")
    assert store == "/root/.ollama/models" and "root" in source


def test_app_setting_used_only_when_the_directory_exists() -> None:
    db = PurePath("/Users/a/Library/Application Support/Ollama/db.sqlite")
    assert discover.app_db_path("darwin", {}, PurePath("/Users/a")) == db
    assert discover.app_db_path("linux", {}, PurePath("/home/a")) is None
    assert discover.app_store("/Volumes/ext/models", db, True) == (
        "/Volumes/ext/models", f"the Ollama app's Model location setting in {db}")
    assert discover.app_store("/Volumes/ext/models", db, False) is None
    assert discover.app_store(None, db, True) is None


@pytest.mark.parametrize(("host", "url"), [
    (None, "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"),  # noqa: S104 (a value read, not bound)
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1", "http://127.0.0.1:80"),
    ("[::]:11434", "http://[::1]:11434"),
    ("localhost:9", "http://127.0.0.1:9"),
    (" 'http://127.0.0.2:5/' ", "http://127.0.0.2:5"),
    ("192.168.1.9:11434", None),
    ("ollama.example.org", None),
])
def test_server_url_as_ollama_reads_ollama_host(host: str | None, url: str | None) -> None:
    assert discover.server_url({} if host is None else {"OLLAMA_HOST": host}) == url


def test_adapter_reads_a_root_of_generated_files(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system/ollama.service.d").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/ollama.service").write_text(INSTALL_SH_UNIT)
    (tmp_path / "etc/systemd/system/ollama.service.d/override.conf").write_text(
        "[Service]\nEnvironment=OLLAMA_MODELS=/srv/models\n")
    (tmp_path / "etc/passwd").write_text(USERS_FILE)
    service = read_service(tmp_path)
    assert service is not None and service.user == ("ollama", "/etc/systemd/system/ollama.service")
    loc = locate_store(None, {}, Path("/home/u"), root=tmp_path, system="linux")
    assert loc.path == Path("/srv/models") and "override.conf" in loc.source
    # --models and $OLLAMA_MODELS still come first
    assert locate_store(None, {"OLLAMA_MODELS": "/x"}, Path("/h"), root=tmp_path,
                        system="linux").path == Path("/x")
    assert locate_store(Path("/y"), {}, Path("/h"), root=tmp_path, system="linux").path \
        == Path("/y")
    # no unit: the default
    empty = tmp_path / "empty"
    empty.mkdir()
    assert locate_store(None, {}, Path("/home/u"), root=empty, system="linux") == \
        StoreLocation(Path("/home/u/.ollama/models"), "default")


def test_adapter_reads_the_app_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = home / "Library/Application Support/Ollama/db.sqlite"
    db.parent.mkdir(parents=True)
    models = tmp_path / "ext-models"
    conn = sqlite3.connect(db)
    # the settings table of Ollama's app/store/schema.sql, as the app creates it
    conn.execute("CREATE TABLE settings (id INTEGER PRIMARY KEY CHECK (id = 1), "
                 "models TEXT NOT NULL DEFAULT '', expose BOOLEAN NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO settings (id, models) VALUES (1, ?)", (str(models),))
    conn.commit()
    conn.close()
    assert locate_store(None, {}, home, system="darwin").source == "default"  # not there yet
    models.mkdir()
    loc = locate_store(None, {}, home, system="darwin")
    assert loc.path == models and "Model location" in loc.source


# ---------------------------------------------------------------------------------------------
# After an import: does the server list the models?


class FakeOllama(ThreadingHTTPServer):
    store: Path


class TagsHandler(BaseHTTPRequestHandler):
    """GET /api/tags answered as Ollama's ListHandler would for the store it reads: every
    manifest file at depth 4, named by DisplayShortest, with the sha256 of its bytes."""

    server: FakeOllama

    def do_GET(self) -> None:
        if self.path != "/api/tags":
            self.send_error(404)
            return
        store = Store(StoreLocation(self.server.store, "fake"))
        models = [{"name": n.display_shortest(), "model": n.display_shortest(),
                   "digest": hashlib.sha256(store.manifest_path(n).read_bytes()).hexdigest()}
                  for n in store.names()]
        body = json.dumps({"models": models}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_ollama(tmp_path: Path) -> Iterator[FakeOllama]:
    """Ollama cannot run here (no binary, no network to fetch one), so a fake answers its
    /api/tags; only the list's shape matters, and it lists a real store directory."""
    server = FakeOllama(("127.0.0.1", 0), TagsHandler)
    server.store = tmp_path / "server-store"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_import_says_when_the_server_lists_the_models(tmp_path: Path, bundle_file: Path,
                                                      keys: Keys, env: dict[str, str],
                                                      fake_ollama: FakeOllama) -> None:
    target = fake_ollama.store
    host = f"127.0.0.1:{fake_ollama.server_address[1]}"
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
             "--json"], env={"OLLAMA_HOST": host})
    assert r.exit_code == 0, r.stderr
    server = json.loads(r.stdout)["server"]
    assert server["url"] == f"http://{host}"
    assert sorted(server["listed"]) == ["hf.co/org/repo:Q4_K_M", "tiny:chat", "tiny:latest"]
    assert server["missing"] == [] and server["otherManifest"] == []
    assert "warning" not in r.stderr


def test_import_says_plainly_when_the_server_reads_another_store(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str],
        fake_ollama: FakeOllama) -> None:
    host = f"127.0.0.1:{fake_ollama.server_address[1]}"
    r = run(["import", str(bundle_file), "--models", str(tmp_path / "elsewhere"), "--trust",
             str(keys.pub)], env={"OLLAMA_HOST": host})
    assert r.exit_code == 0, r.stderr
    assert f"the Ollama server at http://{host} does NOT list 3 of the 3 models" in r.stdout
    assert "does not list" in r.stderr and "another store" in r.stderr
    assert "--models DIR" in r.stderr
    r = run(["import", str(bundle_file), "--models", str(tmp_path / "e2"), "--trust",
             str(keys.pub), "--no-server-check", "--json"], env={"OLLAMA_HOST": host})
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["server"] is None and "warning" not in r.stderr


def test_no_server_is_not_an_error(tmp_path: Path, bundle_file: Path, keys: Keys,
                                   env: dict[str, str]) -> None:
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run(["import", str(bundle_file), "--models", str(tmp_path / "t"), "--trust",
             str(keys.pub), "--json"], env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["server"]["problem"] == "no Ollama server answered"
