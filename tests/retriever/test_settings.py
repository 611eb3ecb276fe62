"""The retriever's settings and collection settings: choices parse to their enums, bad values are refused
when the settings are built, naming the setting and what to change."""

from __future__ import annotations

import pytest

from cir.retriever.v1 import retriever_pb2
from cir_common.config import load_settings
from cir_common.errors import ConfigError, InvalidArgument
from cir_common.vocabulary import CAPTIONER, ENCODER, REASONER, RETRIEVER, DecodingVariant, Preprocessing
from cir_retriever.__main__ import SERVICE_NAME
from cir_retriever.conversions import collection_settings_from_proto, collection_settings_to_proto
from cir_retriever.gallery.types import AnnIndex, CollectionSettings, settings_from_dict, settings_to_dict
from cir_retriever.presets import Preset
from cir_retriever.settings import ENV_PREFIX, SECTION, RetrieverSettings, StoreBackend
from cir_retriever.strategies import StrategyName


def _load(environ: dict[str, str], profile=None) -> RetrieverSettings:
    return load_settings(
        RetrieverSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ=environ
    )


def test_the_identity_and_defaults_come_from_the_vocabulary():
    assert SERVICE_NAME == RETRIEVER.grpc_name == "cir.retriever.v1.RetrieverService"
    assert ENV_PREFIX == RETRIEVER.env_prefix == "CIR_RETRIEVER_"
    assert SECTION == RETRIEVER.profile_section == "retriever"
    settings = _load({})
    assert settings.port == RETRIEVER.default_port == 50050
    assert (settings.encoder_address, settings.captioner_address, settings.reasoner_address) == (
        ENCODER.default_address,
        CAPTIONER.default_address,
        REASONER.default_address,
    )
    assert settings.store_backend is StoreBackend.LOCAL
    assert settings.default_strategy is StrategyName.CVSI and settings.default_preset is Preset.CIRCO
    assert settings.default_decoding_variant is DecodingVariant.BEAM_SAMPLE
    assert settings.default_preprocessing is Preprocessing.TARGETPAD


def test_choices_parse_from_profile_and_environment(tmp_path):
    profile = tmp_path / "profile.toml"
    profile.write_text('[retriever]\nstore_backend = "milvus"\ndefault_strategy = "ldre"\n')
    env = {"CIR_RETRIEVER_DEFAULT_PRESET": "FashionIQ", "CIR_RETRIEVER_DEFAULT_DECODING_VARIANT": "nucleus"}
    settings = _load(env, profile)
    assert settings.store_backend is StoreBackend.MILVUS
    assert settings.default_strategy is StrategyName.LDRE
    assert settings.default_preset is Preset.FASHIONIQ
    assert settings.default_decoding_variant is DecodingVariant.NUCLEUS
    # built by hand from strings, as tests and tools do: the same enums
    by_hand = RetrieverSettings(store_backend="milvus", default_preprocessing="model_default")
    assert by_hand.store_backend is StoreBackend.MILVUS
    assert by_hand.default_preprocessing is Preprocessing.MODEL_DEFAULT


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STORE_BACKEND", "cassandra", "CIR_RETRIEVER_STORE_BACKEND='cassandra': choose local or milvus"),
        ("DEFAULT_STRATEGY", "cvs", "CIR_RETRIEVER_DEFAULT_STRATEGY='cvs': choose image_only, text_only, "),
        ("DEFAULT_PRESET", "coco", "CIR_RETRIEVER_DEFAULT_PRESET='coco': choose circo, cirr or fashioniq"),
        ("DEFAULT_DECODING_VARIANT", "greedy", r"choose nucleus or beam_sample"),
        ("DEFAULT_PREPROCESSING", "crop", r"choose targetpad or model_default"),
    ],
)
def test_an_unknown_choice_lists_the_choices(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        _load({f"CIR_RETRIEVER_{variable}": value})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_CONCURRENT_GENERATIVE_SEARCHES": "0"}, "CIR_RETRIEVER_MAX_CONCURRENT_GENERATIVE_SEARCHES=0"),
        ({"MAX_QUEUED_GENERATIVE_SEARCHES": "-1"}, "need at least 1 running and 0 or more queued"),
        ({"STAGE_ESTIMATE_WINDOW": "0"}, "CIR_RETRIEVER_STAGE_ESTIMATE_WINDOW must be at least 1"),
        ({"STAGE_ESTIMATE_QUANTILE": "1.5"}, "CIR_RETRIEVER_STAGE_ESTIMATE_QUANTILE must be within 0..1"),
        ({"DEFAULT_NUM_CAPTIONS": "65"}, r"CIR_RETRIEVER_DEFAULT_NUM_CAPTIONS=65 is outside 1\.\.64"),
        ({"DEFAULT_TOP_K": "20", "MAX_TOP_K": "10"}, "DEFAULT_TOP_K=20 must be at least 1 and at most"),
        ({"DEFAULT_TOP_K": "0"}, "CIR_RETRIEVER_DEFAULT_TOP_K=0"),
        ({"MAX_TEXT_CHARS": "0"}, "CIR_RETRIEVER_MAX_TEXT_CHARS must be at least 1, got 0"),
        ({"INGEST_BATCH_SIZE": "0"}, "CIR_RETRIEVER_INGEST_BATCH_SIZE must be at least 1, got 0"),
        (
            {"INGEST_MAX_BATCHES_IN_FLIGHT": "0"},
            "CIR_RETRIEVER_INGEST_MAX_BATCHES_IN_FLIGHT must be at least 1, got 0",
        ),
        ({"DEFAULT_TIMEOUT_S": "0"}, "CIR_RETRIEVER_DEFAULT_TIMEOUT_S=0.0 must be positive"),
        ({"REASONER_BUDGET_S": "nan"}, "CIR_RETRIEVER_REASONER_BUDGET_S=nan must be positive"),
        ({"PORT": "70000"}, "CIR_RETRIEVER_PORT=70000"),  # the common checks run too
    ],
)
def test_a_bad_value_is_refused_at_load_time_naming_the_setting(environ, message):
    with pytest.raises(ConfigError, match=message):
        _load({f"CIR_RETRIEVER_{name}": value for name, value in environ.items()})


def test_settings_built_by_hand_are_checked_too():
    with pytest.raises(ConfigError, match="MAX_CONCURRENT_GENERATIVE_SEARCHES=0"):
        RetrieverSettings(max_concurrent_generative_searches=0)
    with pytest.raises(ConfigError, match="CIR_RETRIEVER_STORE_BACKEND='cassandra': choose local or milvus"):
        RetrieverSettings(store_backend="cassandra")


def test_collection_settings_parse_their_choices():
    settings = CollectionSettings(decoding_variant="nucleus", preprocessing="model_default", ann="ivf")
    assert settings.decoding_variant is DecodingVariant.NUCLEUS
    assert settings.preprocessing is Preprocessing.MODEL_DEFAULT
    assert settings.ann is AnnIndex.IVF
    assert CollectionSettings().ann is AnnIndex.EXACT and not CollectionSettings().ann
    # empty: the server's default (filled by the core)
    empty = CollectionSettings(decoding_variant="", preprocessing="")
    assert (empty.decoding_variant, empty.preprocessing) == (None, None)
    # the stored (JSON) form holds plain strings and reads back equal
    plain = settings_to_dict(settings)
    assert plain["decoding_variant"] == "nucleus" and type(plain["decoding_variant"]) is str
    assert settings_from_dict(plain) == settings


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decoding_variant", "greedy", r"decoding_variant 'greedy' is unknown: nucleus or beam_sample"),
        ("preprocessing", "crop", r"settings\.preprocessing 'crop' is unknown: targetpad or model_default"),
        ("ann", "annoy", r"settings\.ann 'annoy' is unknown: leave it empty \(exact search\) or use hnsw"),
    ],
)
def test_an_unknown_collection_choice_is_the_callers_error(field, value, message):
    with pytest.raises(InvalidArgument, match=message):
        CollectionSettings(**{field: value})
    with pytest.raises(InvalidArgument, match=message):
        collection_settings_from_proto(retriever_pb2.CollectionSettings(**{field: value}))


def test_collection_settings_round_trip_through_the_api():
    settings = CollectionSettings(num_captions=4, decoding_variant="nucleus", ann="hnsw")
    message = collection_settings_to_proto(settings)
    assert (message.decoding_variant, message.preprocessing, message.ann) == ("nucleus", "targetpad", "hnsw")
    assert collection_settings_from_proto(message) == settings
    unset = collection_settings_from_proto(retriever_pb2.CollectionSettings())
    assert (unset.num_captions, unset.decoding_variant, unset.preprocessing, unset.ann) == (
        0,
        None,
        None,
        AnnIndex.EXACT,
    )
