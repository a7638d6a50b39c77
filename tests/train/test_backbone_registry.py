"""The backbone registry (lame.backbones): every family names an adapter that builds it, and an
unknown family is refused with the registered names."""

from dataclasses import replace

import pytest

from lame.backbones import FAMILIES, adapter, build_backbone
from lame.backbones.base import Backbone
from lame.config import LameConfig, load_preset


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_names_an_adapter_with_its_own_build(family):
    cls = adapter(family)
    assert issubclass(cls, Backbone) and cls is not Backbone
    assert "build" in vars(cls), f"{cls.__name__} inherits the base build() that only raises"


def test_the_registry_builds_the_family_the_config_names():
    config = LameConfig.from_dict(load_preset("tiny")["model"])
    backbone = build_backbone(config, vocab_size=300, image_token_id=5)
    assert type(backbone) is adapter(config.backbone.family)


def test_an_unknown_family_is_refused_with_the_registered_ones():
    config = LameConfig.from_dict(load_preset("tiny")["model"])
    config = replace(config, backbone=replace(config.backbone, family="llava"))
    with pytest.raises(ValueError, match="unknown backbone family 'llava'; available: ") as err:
        build_backbone(config, vocab_size=300, image_token_id=5)
    assert all(family in str(err.value) for family in FAMILIES)
