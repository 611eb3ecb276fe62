"""Settings: defaults < profile section < environment; typos and bad values are errors."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

import pytest

from cir_common.config import ServiceSettings, load_settings, settings_reference
from cir_common.errors import ConfigError


@dataclasses.dataclass
class _Settings(ServiceSettings):
    model: str = "default-model"
    batch: int = 8
    window_ms: float = 5.0
    enabled: bool = False
    networks: dict[str, str] = dataclasses.field(default_factory=dict)
    optional_path: str | None = None


def _profile(tmp_path, text: str):
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def test_defaults_apply_without_profile_or_environment():
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ={})
    assert settings.model == "default-model"
    assert settings.max_message_bytes == 32 * 1024 * 1024
    assert settings.image_uri_roots == []


def test_environment_overrides_profile_which_overrides_defaults(tmp_path):
    profile = _profile(tmp_path, '[svc]\nmodel = "from-file"\nbatch = 4\n[networks]\n')
    env = {"CIR_PROFILE": str(profile), "T_BATCH": "16", "T_ENABLED": "yes", "T_WINDOW_MS": "2.5"}
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ=env)
    assert (settings.model, settings.batch, settings.enabled, settings.window_ms) == (
        "from-file",
        16,
        True,
        2.5,
    )


def test_mappings_and_lists_parse_from_profile_and_environment(tmp_path):
    profile = _profile(tmp_path, '[svc]\nimage_uri_roots = ["/a", "/b"]\n[svc.networks]\nlincir = "/x.pt"\n')
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ={"T_PROFILE": str(profile)})
    assert settings.networks == {"lincir": "/x.pt"}
    assert settings.image_uri_roots == ["/a", "/b"]
    env = {"T_NETWORKS": "lincir=/y.pt, searle=/z.pt", "T_IMAGE_URI_ROOTS": "/c,/d"}
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ=env)
    assert settings.networks == {"lincir": "/y.pt", "searle": "/z.pt"}
    assert settings.image_uri_roots == ["/c", "/d"]
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ={"T_NETWORKS": '{"a": "b"}'})
    assert settings.networks == {"a": "b"}


def test_unknown_setting_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown svc setting.*batchh"):
        load_settings(_Settings, section="svc", env_prefix="T_", environ={"T_BATCHH": "3"})
    profile = _profile(tmp_path, '[svc]\nmodle = "x"\n')
    with pytest.raises(ConfigError, match="modle"):
        load_settings(_Settings, section="svc", env_prefix="T_", profile=profile, environ={})


@pytest.mark.parametrize(
    ("key", "value"), [("T_BATCH", "many"), ("T_ENABLED", "perhaps"), ("T_WINDOW_MS", "fast")]
)
def test_bad_values_are_errors_naming_the_setting(key, value):
    with pytest.raises(ConfigError, match=f"{key[2:].lower()}={value!r}"):
        load_settings(_Settings, section="svc", env_prefix="T_", environ={key: value})


def test_missing_or_broken_profile_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(
            _Settings, section="svc", env_prefix="T_", environ={"CIR_PROFILE": str(tmp_path / "no")}
        )
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(
            _Settings, section="svc", env_prefix="T_", profile=_profile(tmp_path, "[svc\n"), environ={}
        )


def test_optional_values_and_reference():
    settings = load_settings(_Settings, section="svc", env_prefix="T_", environ={"T_OPTIONAL_PATH": "/p"})
    assert settings.optional_path == "/p"
    rows = {name: (kind, default) for name, kind, default in settings_reference(_Settings, "T_")}
    assert rows["T_BATCH"] == ("int", "8")
    assert rows["T_OPTIONAL_PATH"] == ("str | NoneType", "None")


class _Colour(StrEnum):
    RED = "red"
    DARK_BLUE = "dark_blue"


@dataclasses.dataclass
class _ChoosingSettings(ServiceSettings):
    colour: _Colour = _Colour.RED
    fallback: _Colour | None = None
    batch: int = 8

    def validate(self) -> None:
        super().validate()
        if self.batch < 1:
            raise ConfigError(f"setting batch={self.batch} must be at least 1")


def test_enum_settings_parse_from_profile_and_environment(tmp_path):
    profile = _profile(tmp_path, '[svc]\ncolour = "dark_blue"\n')
    settings = load_settings(
        _ChoosingSettings, section="svc", env_prefix="T_", profile=profile, environ={"T_FALLBACK": "RED"}
    )
    assert settings.colour is _Colour.DARK_BLUE
    assert settings.fallback is _Colour.RED


def test_unknown_choice_names_the_setting_and_lists_the_choices():
    with pytest.raises(ConfigError, match=r"T_COLOUR='green': choose red or dark_blue"):
        load_settings(_ChoosingSettings, section="svc", env_prefix="T_", environ={"T_COLOUR": "green"})


def test_settings_built_directly_get_their_enum_and_their_checks():
    assert _ChoosingSettings(colour="dark_blue").colour is _Colour.DARK_BLUE  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="choose red or dark_blue"):
        _ChoosingSettings(colour="green")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch=0 must be at least 1"):
        _ChoosingSettings(batch=0)
    with pytest.raises(ConfigError, match="port=70000"):
        load_settings(_ChoosingSettings, section="svc", env_prefix="T_", environ={"T_PORT": "70000"})


def test_reference_shows_choices_and_plain_defaults():
    rows = {name: (kind, default) for name, kind, default in settings_reference(_ChoosingSettings, "T_")}
    assert rows["T_COLOUR"] == ("red / dark_blue", "'red'")
