"""`charlie fetch-model` as a KFP container component (interface only; runs on the CPU image)."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def fetch_model(base_model: str, cache_dir: str, model: Output[Model]):
    """Bring a hub or object-store base model onto the cache volume, once; output a reference.

    The weights stay on the volume (an 8B or 671B model is never copied into the artifact
    store); the output holds config.json, the tokenizer and base_model.json (which weights,
    which revision), so tokenize, plan and train read it like a model folder.

    Args:
        base_model: A hub id (HF_TOKEN from the charlie-hf Secret for gated models), an s3://
            URI of a save_pretrained folder (credentials from charlie-s3), or a folder path.
        cache_dir: A folder on the mounted cache volume (HF_HOME lives there too).
        model: The reference folder: config.json, tokenizer files, base_model.json.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "fetch-model"],
        args=["--base-model", base_model, "--cache-dir", cache_dir, "--out", model.path],
    )
