import pytest

from histoxmodal.registry import Registry


def test_register_get_list_describe():
    reg: Registry = Registry("widget")

    @reg.register("uni_big", family="vit")
    def uni_big():
        """A big one."""

    @reg.register()
    def UNI_small():
        """A small one."""

    assert reg.get("UNI_BIG") is uni_big
    assert reg.list() == ["uni_big", "uni_small"]
    assert reg.list("uni_s*") == ["uni_small"]
    assert reg.describe("uni_big") == {"summary": "A big one.", "family": "vit"}
    assert "uni_small" in reg and len(reg) == 2


def test_unknown_name_suggests_and_lists():
    reg: Registry = Registry("widget")
    reg.register("openslide")(object)
    reg.register("tifffile")(object)
    with pytest.raises(KeyError) as e:
        reg.get("opneslide")
    assert "Did you mean 'openslide'" in str(e.value)
    assert "Available: openslide, tifffile" in str(e.value)


def test_duplicate_raises():
    reg: Registry = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("A")(int)
