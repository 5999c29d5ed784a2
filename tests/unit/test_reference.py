"""Tests for bundler.reference: Ollama model names (Ollama's types/model/name.go).

Vectors marked "name_test.go", "manifest_test.go" or "routes.go" are ported from ollama/ollama
at fb30760996871fa9460115c753afd2c60d4ab0f7 (types/model/name_test.go,
manifest/manifest_test.go, server/routes.go getExistingName); "§1.3" from the reference's
examples; "derived" vectors follow from reading name.go and are not in Ollama's tests.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundler.errors import ExitCode, UsageError
from bundler.reference import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    PART_KINDS,
    InvalidNameError,
    ModelName,
    _Bare,
    _parse_bare,
    is_valid_part,
)

PART80 = "8" * 80
PART350 = "3" * 350
REG = "registry.ollama.ai"


def bare_is_valid(text: str) -> bool:
    """Ollama's ParseNameBare(text).IsValid(): every part present and valid, no defaults."""
    bare = _parse_bare(text)
    values = (bare.host, bare.namespace, bare.model, bare.tag)
    return all(
        value is not None and is_valid_part(kind, value)
        for kind, value in zip(PART_KINDS, values, strict=True)
    )


def parses(text: str) -> bool:
    try:
        ModelName.parse(text)
    except InvalidNameError:
        return False
    return True


# --- name_test.go TestParseNameParts: bare split and manifest path after defaults ----------

PARSE_PARTS: list[tuple[str, _Bare, tuple[str, str, str, str]]] = [
    (
        "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
        _Bare("", REG, "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
        (REG, "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
    ),
    (
        "scheme://host:port/namespace/model:tag",
        _Bare("scheme", "host:port", "namespace", "model", "tag"),
        ("host:port", "namespace", "model", "tag"),
    ),
    (
        "host/namespace/model:tag",
        _Bare("", "host", "namespace", "model", "tag"),
        ("host", "namespace", "model", "tag"),
    ),
    (
        "host:port/namespace/model:tag",
        _Bare("", "host:port", "namespace", "model", "tag"),
        ("host:port", "namespace", "model", "tag"),
    ),
    (
        "host/namespace/model",
        _Bare("", "host", "namespace", "model", ""),
        ("host", "namespace", "model", "latest"),
    ),
    (
        "host:port/namespace/model",
        _Bare("", "host:port", "namespace", "model", ""),
        ("host:port", "namespace", "model", "latest"),
    ),
    (
        "namespace/model",
        _Bare("", "", "namespace", "model", ""),
        (REG, "namespace", "model", "latest"),
    ),
    ("model", _Bare("", "", "", "model", ""), (REG, "library", "model", "latest")),
    ("h/nn/mm:t", _Bare("", "h", "nn", "mm", "t"), ("h", "nn", "mm", "t")),
    (
        f"{PART80}/{PART80}/{PART80}:{PART80}",
        _Bare("", PART80, PART80, PART80, PART80),
        (PART80, PART80, PART80, PART80),
    ),
    (
        f"{PART350}/{PART80}/{PART80}:{PART80}",
        _Bare("", PART350, PART80, PART80, PART80),
        (PART350, PART80, PART80, PART80),
    ),
]


@pytest.mark.parametrize(("text", "bare", "path"), PARSE_PARTS)
def test_parse_name_parts(text: str, bare: _Bare, path: tuple[str, str, str, str]) -> None:
    assert _parse_bare(text) == bare
    assert ModelName.parse(text).manifest_parts() == path


# --- name_test.go testCases (validity under ParseNameBare), plus validity after defaults ------
# (text, valid without defaults as in Ollama's test, valid after ParseName's defaults)

VALIDITY: list[tuple[str, bool, bool]] = [
    ("", False, False),
    ("_why/_the/_lucky:_stiff", True, True),
    ("h/n/m:t", True, True),
    ("host/namespace/model:tag", True, True),
    ("host/namespace/model", False, True),
    ("namespace/model", False, True),
    ("model", False, True),
    (f"{PART80}/{PART80}/{PART80}:{PART80}", True, True),
    (f"{PART350}/{PART80}/{PART80}:{PART80}", True, True),
    ("h/nn/mm:t", True, True),
    ("m", False, True),
    ("n/m:", False, False),
    ("h/n/m", False, True),
    ("@t", False, False),
    ("m@d", False, False),
    ("^", False, False),
    ("mm:", False, False),
    ("/nn/mm", False, False),
    ("//", False, False),
    ("//mm", False, False),
    ("hh//", False, False),
    ("//mm:@", False, False),
    ("00@", False, False),
    ("@", False, False),
    ("-hh/nn/mm:tt", False, False),
    ("hh/-nn/mm:tt", False, False),
    ("hh/nn/-mm:tt", False, False),
    ("hh/nn/mm:-tt", False, False),
    ("host:https/namespace/model:tag", True, True),
    ("host/name:space/model:tag", False, False),
]


@pytest.mark.parametrize(("text", "bare_valid", "valid"), VALIDITY)
def test_name_validity(text: str, bare_valid: bool, valid: bool) -> None:
    assert bare_is_valid(text) is bare_valid
    assert parses(text) is valid
    if bare_valid:  # name_test.go TestNameIsValid: valid names round-trip through String()
        assert str(ModelName.parse(text)) == text


def test_default_name() -> None:  # name_test.go TestNameparseNameDefault
    assert str(ModelName.parse("xx")) == "registry.ollama.ai/library/xx:latest"


# --- name_test.go TestNameIsValidPart and TestIsValidNamespace, plus limits -------------------

VALID_PART: list[tuple[str, str, bool]] = [
    # name_test.go TestNameIsValidPart (its kindDigest vector is not ported: no digest kind)
    ("host", "", False),
    ("host", "a", True),
    ("host", "a.", True),
    ("host", "a.b", True),
    ("host", "a:123", True),
    ("host", "a:123/aa/bb", False),
    ("namespace", "bb", True),
    ("namespace", "a.", False),
    ("model", "-h", False),
    # name_test.go TestIsValidNamespace
    ("namespace", "", False),
    ("namespace", "a", True),
    ("namespace", "a:b", False),
    ("namespace", "a/b", False),
    ("namespace", "a:b/c", False),
    ("namespace", "a/b:c", False),
    ("namespace", "a/b:c/d", False),
    ("namespace", "a/b:c/d@e", False),
    ("namespace", "a/b:c/d@sha256-100", False),
    ("namespace", "himynameisjoe", True),
    ("namespace", "himynameisreallyreallyreallyreallylongbutitshouldstillbevalid", True),
    # §1.3 length table, in bytes: 80/81 and 350/351
    ("host", "h" * 350, True),
    ("host", "h" * 351, False),
    ("namespace", "n" * 80, True),
    ("namespace", "n" * 81, False),
    ("model", "m" * 80, True),
    ("model", "m" * 81, False),
    ("tag", "t" * 80, True),
    ("tag", "t" * 81, False),
    # §1.3 character table
    ("host", "_h", True),
    ("host", ".h", False),
    ("host", ":h", False),
    ("host", "h-1.b_c:5000", True),
    ("namespace", "_n-1", True),
    ("model", "m.1-2_3", True),
    ("model", "m:1", False),
    ("tag", "t.1-2_3", True),
    ("tag", "t:1", False),
    ("model", "..", False),
    ("tag", ".", False),
    ("model", "m@d", False),
    ("model", "a b", False),
    ("host", "a/b", False),
    # derived: ASCII only; lengths in bytes ("é" is 2 bytes, so 40 of them are 80 bytes)
    ("model", "modèle", False),
    ("model", "é" * 40, False),
    ("tag", "\uff11", False),  # FULLWIDTH DIGIT ONE
    ("namespace", "\u212a", False),  # KELVIN SIGN: EqualFolds "k" in Go, still not valid here
]


@pytest.mark.parametrize(("kind", "text", "valid"), VALID_PART)
def test_is_valid_part(kind: str, text: str, valid: bool) -> None:
    assert is_valid_part(kind, text) is valid


def test_is_valid_part_unknown_kind() -> None:
    with pytest.raises(ValueError, match="digest"):
        is_valid_part("digest", "sha256-00")


LIMITS: list[tuple[str, bool]] = [
    (f"{PART80}:{PART80}", True),
    (f"{PART80}8:tag", False),
    (f"model:{PART80}8", False),
    (f"{PART80}/model", True),
    (f"{PART80}8/model", False),
    (f"{PART350}/ns/model", True),
    (f"{PART350}3/ns/model", False),
    (f"http://{PART350}/ns/model", True),  # the scheme does not count towards the host
    ("é" * 40, False),  # 80 bytes but not ASCII
    ("e" * 80, True),
]


@pytest.mark.parametrize(("text", "valid"), LIMITS)
def test_length_limits_in_names(text: str, valid: bool) -> None:
    assert parses(text) is valid


# --- §1.3 rules and examples ---------------------------------------------------------------

# (input, manifest path under manifests/, `ollama list` display) from the §1.3 table
EXAMPLES: list[tuple[str, tuple[str, str, str, str], str]] = [
    ("llama3.2", (REG, "library", "llama3.2", "latest"), "llama3.2:latest"),
    ("llama3.2:latest", (REG, "library", "llama3.2", "latest"), "llama3.2:latest"),
    ("myorg/llama3.2", (REG, "myorg", "llama3.2", "latest"), "myorg/llama3.2:latest"),
    ("hf.co/user/repo:Q4_K_M", ("hf.co", "user", "repo", "Q4_K_M"), "hf.co/user/repo:Q4_K_M"),
    (
        "http://localhost:5000/myorg/llama3.2:latest",
        ("localhost:5000", "myorg", "llama3.2", "latest"),
        "localhost:5000/myorg/llama3.2:latest",
    ),
    (
        "localhost:5000/myorg/llama3.2",
        ("localhost:5000", "myorg", "llama3.2", "latest"),
        "localhost:5000/myorg/llama3.2:latest",
    ),
    ("Llama3.2:Latest", (REG, "library", "Llama3.2", "Latest"), "Llama3.2:Latest"),
]


@pytest.mark.parametrize(("text", "path", "shown"), EXAMPLES)
def test_reference_examples(text: str, path: tuple[str, str, str, str], shown: str) -> None:
    name = ModelName.parse(text)
    assert name.manifest_parts() == path
    assert name.display_shortest() == shown
    assert str(name) == f"{path[0]}/{path[1]}/{path[2]}:{path[3]}"


# (input, the part the error message must name)
INVALID: list[tuple[str, str]] = [
    ("localhost:5000/llama3.2", "namespace"),  # §1.3: ":" is illegal in a namespace
    ("user.name/model", "namespace"),  # §1.3: "." is illegal in a namespace
    ("a/b/c/d", "host"),  # §1.3: host "a/b"
    ("../../model:tag", "host"),
    ("../model", "namespace"),
    ("..", "model"),
    ("m@d", "model"),
    ("model@sha256:" + "0" * 64, "model"),  # ":" after the last "/" starts the tag
    (":tag", "model"),  # §1.3 empty sides
    ("model:", "tag"),
    ("/model", "namespace"),
    ("ns/", "model"),
    ("", "model"),
    ("modèle", "model"),
    ("llama3.2:läst", "tag"),
    ("http://ns/model", "host"),  # derived: a scheme needs host/namespace/model after it
    ("http://model", "namespace"),
    ("http://a://b/ns/m", "host"),  # derived: the scheme ends at the first "://"
    (" model", "model"),
]


@pytest.mark.parametrize(("text", "part"), INVALID)
def test_invalid_names(text: str, part: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        ModelName.parse(text)
    error = caught.value
    assert isinstance(error, UsageError)
    assert error.exit_code is ExitCode.USAGE
    assert int(error.exit_code) == 2
    assert f'"{text}"' in error.message
    assert f"the {part}" in error.message
    assert error.hint is not None
    assert "[[host/]namespace/]model[:tag]" in error.hint


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("modèle", 'non-ASCII character "è"'),
        ("é" * 40, "non-ASCII"),
        ("m" * 81, "81 bytes long (at most 80)"),
        (f"{PART350}3/n/m", "351 bytes long (at most 350)"),
        ("-m", 'starts with "-"'),
        ("user.name/model", 'contains "."'),
        ("model:", "the tag is empty"),
    ],
)
def test_invalid_name_message_says_why(text: str, fragment: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        ModelName.parse(text)
    assert fragment in caught.value.message


def test_invalid_name_message_for_host_without_namespace() -> None:
    with pytest.raises(InvalidNameError, match=r"localhost:5000/library/llama3\.2"):
        ModelName.parse("localhost:5000/llama3.2")


# (input, expected parts): scheme handling read from ParseNameBare ("derived")
SCHEMES: list[tuple[str, tuple[str, str, str, str]]] = [
    ("https://localhost:5000/myorg/llama3.2", ("localhost:5000", "myorg", "llama3.2", "latest")),
    ("http://registry.ollama.ai/library/llama3.2:1b", (REG, "library", "llama3.2", "1b")),
    ("x://h/n/m:t", ("h", "n", "m", "t")),
    ("://h/n/m:t", ("h", "n", "m", "t")),  # empty scheme: the default is used
    ("http:///library/llama3.2", (REG, "library", "llama3.2", "latest")),  # empty host: default
    ("HTTP://H/N/M:T", ("H", "N", "M", "T")),
]


@pytest.mark.parametrize(("text", "parts"), SCHEMES)
def test_scheme_prefix_is_dropped(text: str, parts: tuple[str, str, str, str]) -> None:
    name = ModelName.parse(text)
    assert name.manifest_parts() == parts
    assert "://" not in str(name)


def test_bare_keeps_scheme() -> None:
    assert _parse_bare("http://localhost:5000/a/b:c").scheme == "http"
    assert _parse_bare("localhost:5000/a/b:c").scheme == ""


def test_parse_defaults() -> None:
    name = ModelName.parse("m")
    assert (name.host, name.namespace, name.tag) == (DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG)


# --- ParseNameFromFilepath (name_test.go and manifest_test.go) -----------------------------

# manifest_test.go TestManifests "multiple"
LLAMA3_TAGS = [
    "latest",
    "q4_0",
    "q4_1",
    "q8_0",
    "q5_0",
    "q5_1",
    "q2_K",
    "q3_K_S",
    "q3_K_M",
    "q3_K_L",
    "q4_K_S",
    "q4_K_M",
    "q5_K_S",
    "q5_K_M",
    "q6_K",
]

FROM_PATH: list[tuple[tuple[str, ...], ModelName | None]] = [
    # name_test.go TestParseNameFromFilepath, as filepath.Join then Split on "/" gives them
    (("host", "namespace", "model", "tag"), ModelName("host", "namespace", "model", "tag")),
    (
        ("host:port", "namespace", "model", "tag"),
        ModelName("host:port", "namespace", "model", "tag"),
    ),
    (("namespace", "model", "tag"), None),
    (("model", "tag"), None),
    (("model",), None),
    (("..", "..", "model", "tag"), None),
    (("namespace", "tag"), None),  # filepath.Join("", "namespace", ".", "tag")
    ((".",), None),  # filepath.Join(".", ".", ".", ".")
    (("", "path", "to", "random", "file"), None),  # filepath.Join("/", "path", ...)
    # the same before Join cleans them (4 components, still invalid)
    (("", "namespace", ".", "tag"), None),
    ((".", ".", ".", "."), None),
    # manifest_test.go TestManifests
    *(
        ((REG, "library", "llama3", tag), ModelName(REG, "library", "llama3", tag))
        for tag in LLAMA3_TAGS
    ),
    (("host", "namespace", "model", ".hidden"), None),
    (("host", "namespace", "model", "tag", "one"), None),
    (("host", "namespace", "model", "tag", "another", "one"), None),
    (("host", "namespace", "model", "TAG"), ModelName("host", "namespace", "model", "TAG")),
    (("host", "namespace", "MODEL", "tag"), ModelName("host", "namespace", "MODEL", "tag")),
    (("host", "NAMESPACE", "model", "tag"), ModelName("host", "NAMESPACE", "model", "tag")),
    (("HOST", "namespace", "model", "tag"), ModelName("HOST", "namespace", "model", "tag")),
    # §1.8: a valid tag with a suffix is a model; a namespace with "." or ":" is not
    (
        ("host", "namespace", "model", "latest.tmp"),
        ModelName("host", "namespace", "model", "latest.tmp"),
    ),
    (("host", "user.name", "model", "tag"), None),
    (("localhost:5000", "ns", "model", "tag"), ModelName("localhost:5000", "ns", "model", "tag")),
    (("host", "ns", "model", "t:1"), None),
    (("host", "ns", "model", ""), None),
]


@pytest.mark.parametrize(("parts", "expected"), FROM_PATH)
def test_from_manifest_path(parts: tuple[str, ...], expected: ModelName | None) -> None:
    assert ModelName.from_manifest_path(parts) == expected
    assert ModelName.from_manifest_path(list(parts)) == expected


def test_from_manifest_path_rejects_a_string() -> None:
    with pytest.raises(TypeError):
        ModelName.from_manifest_path("abcd")


ROUND_TRIP = [t for t, _, valid in VALIDITY if valid] + [t for t, *_ in EXAMPLES]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_manifest_path_round_trip(text: str) -> None:
    name = ModelName.parse(text)
    assert ModelName.from_manifest_path(name.manifest_parts()) == name
    assert ModelName.parse(str(name)) == name


# --- DisplayShortest ------------------------------------------------------------------------

DISPLAY: list[tuple[str, str]] = [
    # name_test.go TestDisplayShortest
    ("registry.ollama.ai/library/model:latest", "model:latest"),
    ("registry.ollama.ai/library/model:tag", "model:tag"),
    ("registry.ollama.ai/namespace/model:tag", "namespace/model:tag"),
    ("host/namespace/model:tag", "host/namespace/model:tag"),
    ("host/library/model:tag", "host/library/model:tag"),
    # §1.3: the comparisons ignore case, the shown parts keep it
    ("REGISTRY.OLLAMA.AI/LIBRARY/Model:Tag", "Model:Tag"),
    ("Registry.Ollama.AI/MyOrg/m:t", "MyOrg/m:t"),
    ("registry.ollama.ai/Library/m:LATEST", "m:LATEST"),
    ("registry.ollama.ai.example/library/m:t", "registry.ollama.ai.example/library/m:t"),
    ("hf.co/library/m:t", "hf.co/library/m:t"),
]


@pytest.mark.parametrize(("text", "shown"), DISPLAY)
def test_display_shortest(text: str, shown: str) -> None:
    assert ModelName.parse(text).display_shortest() == shown


def test_folded() -> None:
    name = ModelName("Hf.Co", "User_1", "Repo-X", "Q4_K_M")
    assert name.folded() == ("hf.co", "user_1", "repo-x", "q4_k_m")
    assert name.manifest_parts() == ("Hf.Co", "User_1", "Repo-X", "Q4_K_M")


# --- getExistingName (server/routes.go) ---------------------------------------------------

N = ModelName.parse

CANONICAL: list[tuple[str, list[str], str]] = [
    # no existing names, or no match: the input is kept
    ("Llama3.2:Latest", [], "registry.ollama.ai/library/Llama3.2:Latest"),
    ("qwen:7b", ["llama3.2:latest"], "registry.ollama.ai/library/qwen:7b"),
    # the existing spelling wins
    ("LLAMA3.2:LATEST", ["llama3.2:latest"], "registry.ollama.ai/library/llama3.2:latest"),
    ("llama3.2", ["Llama3.2:Latest"], "registry.ollama.ai/library/Llama3.2:Latest"),
    (
        "REGISTRY.OLLAMA.AI/LIBRARY/llama3.2",
        ["llama3.2:latest"],
        "registry.ollama.ai/library/llama3.2:latest",
    ),
    ("HF.CO/User/Repo:q4", ["hf.co/user/repo:Q4_K_M"], "hf.co/user/repo:q4"),
    # per part, independently: parts may come from different existing names
    ("foo:v1", ["Foo:latest", "bar:V1"], "registry.ollama.ai/library/Foo:V1"),
    ("myorg/Bar:x", ["MyOrg/foo:latest"], "registry.ollama.ai/MyOrg/Bar:x"),
    ("LOCALHOST:5000/NS/m:t", ["localhost:5000/ns/other:y"], "localhost:5000/ns/m:t"),
    # several spellings of one part: the last in iteration order wins
    ("foo", ["Foo:latest", "FOO:latest"], "registry.ollama.ai/library/FOO:latest"),
    ("foo", ["FOO:latest", "Foo:latest"], "registry.ollama.ai/library/Foo:latest"),
    ("foo:TAG", ["Foo:Tag", "other:tag"], "registry.ollama.ai/library/Foo:tag"),
    # a part takes the spelling of any name, also of one in another namespace (Ollama 0.34.4
    # would keep TINY: formats/ollama-store.md §2)
    ("Team/TINY:Other", ["tiny:latest"], "registry.ollama.ai/Team/tiny:Other"),
]


@pytest.mark.parametrize(("text", "existing", "expected"), CANONICAL)
def test_canonical(text: str, existing: list[str], expected: str) -> None:
    result = N(text).canonical(N(e) for e in existing)  # any iterable, here a generator
    assert str(result) == expected
    assert result.folded() == N(text).folded()


# --- direct construction and properties -------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        ("", "library", "m", "latest"),
        (REG, "user.name", "m", "latest"),
        (REG, "library", "..", "latest"),
        (REG, "library", "m", "t:1"),
        (REG, "library", "m" * 81, "latest"),
    ],
)
def test_construction_validates(parts: tuple[str, str, str, str]) -> None:
    with pytest.raises(InvalidNameError):
        ModelName(*parts)


def test_frozen() -> None:
    name = N("m")
    with pytest.raises(AttributeError):
        name.model = "x"  # type: ignore[misc]


NAME_CHARS = st.text(alphabet=st.sampled_from("aZ09_.:-/@é ://"), max_size=30)


@given(NAME_CHARS)
def test_fuzz_properties(text: str) -> None:
    # name_test.go FuzzName: valid names never have ".." or over-long parts and round-trip
    try:
        name = ModelName.parse(text)
    except InvalidNameError:
        assert not bare_is_valid(text)
        return
    assert ".." not in name.manifest_parts()
    assert all(len(part.encode()) <= 350 for part in name.manifest_parts())
    assert ModelName.parse(str(name)) == name
    assert ModelName.from_manifest_path(name.manifest_parts()) == name
    if bare_is_valid(text):
        assert str(name) == text
