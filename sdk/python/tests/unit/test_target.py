"""mcp:// validation: what reaches the sidecar is exactly what the agent named."""

import pytest

from meshward import DEFAULT_OUTBOUND, InvalidURL, parse_target
from meshward._target import resolve_sidecar


@pytest.mark.parametrize(
    "url, sidecar_path",
    [
        ("mcp://hello-skill/say-hello", "/mcp://hello-skill/say-hello"),
        ("mcp://hello-skill", "/mcp://hello-skill/"),
        ("mcp://hello-skill/", "/mcp://hello-skill/"),
        ("mcp://hello-skill?x=1", "/mcp://hello-skill/?x=1"),
        ("mcp://svc/a/b?q=a%20b&r=../x", "/mcp://svc/a/b?q=a%20b&r=../x"),
        ("mcp://s1/caf%C3%A9", "/mcp://s1/caf%C3%A9"),
        ("mcp://a/x.y/..z/...", "/mcp://a/x.y/..z/..."),
    ],
)
def test_valid_targets_map_to_the_sidecar_prefix(url, sidecar_path):
    assert parse_target(url).sidecar_path == sidecar_path


def test_target_parts():
    t = parse_target("mcp://customer-lookup/customers/42?full=1")
    assert (t.service, t.path, t.query) == ("customer-lookup", "/customers/42", "full=1")
    assert str(t) == "mcp://customer-lookup/customers/42?full=1"


@pytest.mark.parametrize(
    "url, why",
    [
        # Scheme.
        ("http://hello-skill/x", "mcp://"),
        ("MCP://hello-skill/x", "mcp://"),
        ("mcp:/hello-skill/x", "mcp://"),
        (" mcp://hello-skill/x", "mcp://"),
        # Service name: userinfo, port, domain, case, escapes, empty, length.
        ("mcp://hello-skill@billing-system/invoices", "DNS label"),
        ("mcp://billing-system:80/invoices", "DNS label"),
        ("mcp://billing-system:/invoices", "DNS label"),
        ("mcp://billing-system.evil.example/x", "DNS label"),
        ("mcp://Billing-System/x", "DNS label"),
        ("mcp://billing%2Dsystem/x", "DNS label"),
        ("mcp://[::1]/x", "DNS label"),
        ("mcp:///x", "DNS label"),
        ("mcp://-svc/x", "DNS label"),
        ("mcp://svc-/x", "DNS label"),
        ("mcp://" + "a" * 64 + "/x", "DNS label"),
        ("mcp://svc\\billing-system/x", "DNS label"),
        # Path traversal, literal and encoded.
        ("mcp://hello-skill/../billing-system/x", "dot segment"),
        ("mcp://hello-skill/a/..", "dot segment"),
        ("mcp://hello-skill/./x", "dot segment"),
        ("mcp://hello-skill/%2e%2e/x", "encoded '.'"),
        ("mcp://hello-skill/%2E./x", "encoded '.'"),
        ("mcp://hello-skill/a%2Fb", "encoded '/'"),
        ("mcp://hello-skill/a%2fb", "encoded '/'"),
        ("mcp://hello-skill/a%5Cb", "encoded '\\'"),
        ("mcp://hello-skill/a%00", "NUL"),
        ("mcp://hello-skill/a\\..\\b", "'\\'"),
        ("mcp://hello-skill//mcp://billing-system/x", "'//'"),
        ("mcp://hello-skill/admin;x=1", "';'"),
        # Fragments, malformed escapes, raw characters.
        ("mcp://hello-skill/x#frag", "fragment"),
        ("mcp://hello-skill/%zz", "percent-encoding"),
        ("mcp://hello-skill/%4", "percent-encoding"),
        ("mcp://hello-skill/x?q=%g1", "percent-encoding"),
        ("mcp://hello-skill/a b", "percent-encode"),
        ("mcp://hello-skill/a\r\nHost: billing-system", "percent-encode"),
        ("mcp://hello-skill/café", "percent-encode"),
        ("mcp://hello-skill/x?a=\n", "percent-encode"),
    ],
)
def test_attacks_and_mistakes_are_refused_with_the_reason(url, why):
    with pytest.raises(InvalidURL) as e:
        parse_target(url)
    assert why in str(e.value)
    assert isinstance(e.value, ValueError)


def test_non_string_is_refused():
    with pytest.raises(InvalidURL):
        parse_target(b"mcp://x/y")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "outbound, base",
    [
        ("127.0.0.1:15001", "http://127.0.0.1:15001"),
        ("localhost:9", "http://localhost:9"),
        ("http://127.0.0.1:4000", "http://127.0.0.1:4000"),
        ("http://127.0.0.1:4000/", "http://127.0.0.1:4000"),
        ("HTTPS://sidecar:443", "https://sidecar:443"),
        ("[::1]:15001", "http://[::1]:15001"),
        ("http://[::1]:15001", "http://[::1]:15001"),
    ],
)
def test_sidecar_address_forms(outbound, base):
    assert resolve_sidecar(outbound).base_url == base


@pytest.mark.parametrize(
    "outbound",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "ftp://127.0.0.1:21",
        "http://user@127.0.0.1:15001",
        "http://127.0.0.1:15001/mcp://x",
        "http://127.0.0.1:15001?x",
        "::1:15001",
        "[::1]",
    ],
)
def test_bad_sidecar_addresses_are_refused(outbound):
    with pytest.raises(InvalidURL):
        resolve_sidecar(outbound)


def test_sidecar_from_environment(monkeypatch):
    monkeypatch.setenv("MESHWARD_OUTBOUND", "127.0.0.1:4242")
    assert resolve_sidecar().port == 4242
    monkeypatch.delenv("MESHWARD_OUTBOUND")
    assert resolve_sidecar().base_url == "http://" + DEFAULT_OUTBOUND
    assert DEFAULT_OUTBOUND == "127.0.0.1:15001"
    monkeypatch.setenv("MESHWARD_OUTBOUND", "bogus")
    with pytest.raises(InvalidURL, match="MESHWARD_OUTBOUND"):
        resolve_sidecar()
