"""What kind of model a manifest (and its config) describe, as Ollama tells them apart
(formats/ollama-store.md §6). Pure: bytes in, words out."""

from __future__ import annotations

import json

from bundler.oci import Manifest
from bundler.reference import DEFAULT_TAG, ModelName

MEDIA_TYPE_GGUF = "application/vnd.ollama.image.model"
MEDIA_TYPE_TENSOR = "application/vnd.ollama.image.tensor"  # Ollama's manifest/layer.go
MAX_CONFIG_BYTES = 1024 * 1024  # configs are a few hundred bytes; never read more than this


def weights(manifest: Manifest) -> str:
    """"tensor" if any layer is a safetensors tensor (Ollama's hasTensorLayers in
    server/images.go: such a model needs the MLX runtime), "gguf" if a layer holds GGUF
    weights, "none" if neither (a remote model, or config and text only)."""
    kinds = {layer.media_type for layer in manifest.layers}
    if MEDIA_TYPE_TENSOR in kinds:
        return "tensor"
    return "gguf" if MEDIA_TYPE_GGUF in kinds else "none"


def remote_of(config: bytes) -> str | None:
    """For a remote model's config blob, "<remote_model> at <remote_host>"; else None. Remote
    means remote_host or remote_model is a non-empty string (server/model_show_cache.go,
    types/model/config.go). A config that is not a JSON object is not remote."""
    try:
        obj = json.loads(config[:MAX_CONFIG_BYTES])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    host, model = obj.get("remote_host"), obj.get("remote_model")
    host = host if isinstance(host, str) else ""
    model = model if isinstance(model, str) else ""
    if not (host or model):
        return None
    return f"{model or '?'} at {host or '?'}"


def marker_tag(name: ModelName) -> str | None:
    """Why Ollama will not run `name` by that name, if its tag is one internal/modelref's
    parseSourceSuffix reads as a source marker (compared in lower case): ":cloud" and
    ":<tag>-cloud" send generate and chat to the cloud; ":local" means the model's default
    tag. None for an ordinary tag."""
    tag = name.tag.lower()
    shown = name.display_shortest()
    if tag == "cloud" or tag.endswith("-cloud"):
        return (f"{shown}: Ollama reads the tag {name.tag!r} as 'run in Ollama's cloud': "
                f"'ollama run {shown}' is sent to ollama.com, never to this copy")
    if tag == "local":
        base = ModelName(name.host, name.namespace, name.model, DEFAULT_TAG)
        return (f"{shown}: Ollama reads the tag {name.tag!r} as 'the local copy of "
                f"{base.display_shortest()}': 'ollama run {shown}' runs "
                f"{base.display_shortest()}, never this model")
    return None
