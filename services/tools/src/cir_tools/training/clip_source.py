"""Which CLIP a trainer's `--clip` names: an open_clip name, a folder holding a saved model, or a profile."""

from __future__ import annotations

from pathlib import Path


def clip_source(
    argument: str, pretrained: str | None = None, config_dir: str | None = None
) -> tuple[str, str | None, str | None]:
    """(clip_model, clip_pretrained, clip_config_dir) as the encoder's settings take them.

    A folder with `open_clip_config.json` is loaded as `local-dir:`; a profile `.toml` gives its
    `[encoder]` CLIP (so a trainer uses exactly the CLIP that profile serves); anything else is an open_clip
    model name with `pretrained` and `config_dir` as given.
    """
    from cir_encoder.clip_loading import LOCAL_DIR_PREFIX

    source = Path(argument)
    if source.is_dir() and (source / "open_clip_config.json").is_file():
        return f"{LOCAL_DIR_PREFIX}{source.resolve()}", pretrained, config_dir
    if source.suffix == ".toml" and source.is_file():
        from cir_common.config import load_settings
        from cir_encoder.settings import SECTION, EncoderSettings

        encoder = load_settings(
            EncoderSettings,
            section=SECTION,
            env_prefix=EncoderSettings.env_prefix,
            profile=source,
            environ={},
        )
        return encoder.clip_model, encoder.clip_pretrained or None, encoder.clip_config_dir or None
    return argument, pretrained, config_dir
