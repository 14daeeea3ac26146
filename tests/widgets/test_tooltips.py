"""Every tooltip of the dock widgets is written in one module, _widgets/_tooltips.py."""

import pytest

pytest.importorskip("napari")
# torch / timm (and triton) before any viewer's OpenGL: see _common._avoid_triton_llvm_clash.
import timm  # noqa: F401,E402

from napari_fmbff._widgets import FineTuneWidget, SegmentWidget  # noqa: E402
from napari_fmbff._widgets._prompts import PromptsSection  # noqa: E402
from napari_fmbff._widgets._review import ReviewSection  # noqa: E402
from napari_fmbff._widgets._segment import SEGMENT_SHORTCUT  # noqa: E402
from napari_fmbff._widgets._store import StoreSection  # noqa: E402
from napari_fmbff._widgets._tooltips import TOOLTIPS, tooltip  # noqa: E402
from napari_fmbff.model.registry import models_dir as models_folder  # noqa: E402


@pytest.mark.parametrize(("section", "widget_class"),
                         [("segment", SegmentWidget), ("finetune", FineTuneWidget)])
def test_every_tooltip_is_non_empty_and_comes_from_the_tooltips_module(
        make_napari_viewer, models_dir, section, widget_class):
    widget = widget_class(make_napari_viewer())
    # The dock's own fields and those of its sections (prompts, review, the store).
    owners = [widget, *(value for value in vars(widget).values()
                        if isinstance(value, (PromptsSection, ReviewSection, StoreSection)))]
    by_name = {name: value for owner in owners for name, value in vars(owner).items()}
    names = {id(value): name for name, value in by_name.items()}
    # Segment's expert settings sit in its collapsed "Advanced settings" section.
    fields = [*widget, *getattr(widget, "_advanced_fields", ())]
    with_tooltip = {names.get(id(field)) for field in fields if field.tooltip}
    assert None not in with_tooltip  # every field with a tooltip is an attribute of the dock
    assert with_tooltip == set(TOOLTIPS[section])  # no tooltip written elsewhere, none unused
    from napari_fmbff.training.config import PROPAGATE_CROP

    fill = {"models_dir": models_folder(), "shortcut": SEGMENT_SHORTCUT.replace("-", "+"),
            "propagate_crop": PROPAGATE_CROP}
    for name in TOOLTIPS[section]:
        text = by_name[name].tooltip
        assert text.strip() and "{" not in text
        assert text == tooltip(section, name, **fill)
