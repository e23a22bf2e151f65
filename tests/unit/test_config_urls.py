"""Settings (flag > environment > default) and public URLs (DESIGN.md decision 9)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from app.config import ConfigError, load_settings, to_environment
from app.dicomweb.urls import base_url, instance_url, scope_base_url, study_url


def test_defaults_bind_loopback_only() -> None:
    s = load_settings({}, {})
    assert (s.host, s.port, s.dimse_port, s.on_duplicate) == ("127.0.0.1", 8042, 11112, "reject")
    assert s.database_url == ""


def test_flags_override_environment() -> None:
    env = {"PICTOR_PORT": "9000", "PICTOR_HOST": "0.0.0.0", "PICTOR_DATA_DIR": "/srv/x"}
    s = load_settings({"port": 9100, "host": None}, env)
    assert s.port == 9100 and s.host == "0.0.0.0" and s.data_dir == Path("/srv/x")


def test_environment_round_trip() -> None:
    s = load_settings({"port": 9001, "data_dir": "/tmp/a"}, {"DATABASE_URL": "postgresql://x/y"})
    assert load_settings({}, to_environment(s)) == s
    # the default worker count (unset) passes to the children as unset, not as 0
    assert "PICTOR_WORKERS" not in to_environment(s)
    # pictor serve tells its children that a background process of its own delivers
    child = load_settings({}, to_environment(msgspec.structs.replace(s, background_process=True)))
    assert child.background_process and not s.background_process
    three = load_settings({"workers": 3}, {})
    assert load_settings({}, to_environment(three)).worker_count == 3


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PICTOR_PORT": "0"}, "ports"),
        ({"PICTOR_PORT": "http"}, "PICTOR_PORT='http'"),
        ({"PICTOR_WORKERS": "abc"}, "PICTOR_WORKERS='abc'"),
        ({"PICTOR_WORKERS": "0"}, "PICTOR_WORKERS='0' / --workers: give 1 to 64"),
        ({"PICTOR_WORKERS": "65"}, "PICTOR_WORKERS='65'"),
        ({"PICTOR_ON_DUPLICATE": "overwrite"}, "PICTOR_ON_DUPLICATE='overwrite'"),
        ({"PICTOR_AE_TITLE": "A" * 17}, "AE title"),
        ({"PICTOR_LOG_LEVEL": "verbose"}, "PICTOR_LOG_LEVEL='verbose'"),
        ({"PICTOR_TRASH_DAYS": "-1"}, "PICTOR_TRASH_DAYS"),
        ({"PICTOR_TRASH_DAYS": "soon"}, "PICTOR_TRASH_DAYS='soon'"),
        ({"PICTOR_PURGE_INTERVAL": "0"}, "PICTOR_PURGE_INTERVAL"),
        ({"PICTOR_BACKGROUND_NICE": "20"}, "PICTOR_BACKGROUND_NICE is a niceness from 0 to 19"),
        ({"PICTOR_BACKGROUND_NICE": "-5"}, "PICTOR_BACKGROUND_NICE is a niceness from 0 to 19"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings({}, env)


def test_a_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=re.escape("--workers='many'")):
        load_settings({"workers": "many"}, {})


def test_base_url_precedence() -> None:
    assert (
        base_url("https://pacs.example/dw", {"host": "x"}, "http", "x") == "https://pacs.example/dw"
    )
    assert base_url("", {}, "http", "127.0.0.1:8042") == "http://127.0.0.1:8042/dicom-web"
    fwd = {
        "x-forwarded-proto": "https",
        "x-forwarded-host": "pacs.example",
        "x-forwarded-prefix": "/img/",
    }
    assert base_url("", fwd, "http", "10.0.0.1") == "https://pacs.example/img/dicom-web"
    rfc = {"forwarded": 'for=1.2.3.4;proto=https;host="a.example:8443", for=5.6.7.8'}
    assert base_url("", rfc, "http", "x") == "https://a.example:8443/dicom-web"


def test_base_url_of_a_raw_asgi_request() -> None:
    """What the pure ASGI fast paths put in RetrieveURL: the same precedence as for a
    framework request, the first of repeated headers, the server's address without Host."""

    def scope(*headers: tuple[bytes, bytes], scheme: str = "http") -> dict[str, object]:
        return {"headers": list(headers), "scheme": scheme, "server": ("10.0.0.5", 8042)}

    plain = scope((b"host", b"pacs:8042"))
    assert scope_base_url("", plain) == "http://pacs:8042/dicom-web"
    assert scope_base_url("https://x.org/dw", plain) == "https://x.org/dw"
    proxied = scope(
        (b"host", b"internal:8042"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"pacs.example.org"),
        (b"x-forwarded-prefix", b"/archive/"),
    )
    assert scope_base_url("", proxied) == "https://pacs.example.org/archive/dicom-web"
    assert scope_base_url("", scope((b"host", b"first"), (b"host", b"second"))).startswith(
        "http://first/"
    )
    assert scope_base_url("", scope()) == "http://10.0.0.5:8042/dicom-web"


def test_resource_urls_ps3_18_10_4() -> None:
    assert study_url("b", "1.2") == "b/studies/1.2"
    assert instance_url("b", "1", "2", "3") == "b/studies/1/series/2/instances/3"
