"""The names under which napari-fmbff records what it knows, in one place: keys of napari
layers' ``metadata``, of the zarr attributes and of the JSON sidecars it writes. The reader,
the writers, the widgets and the jobs all import them from here."""

#: How labels were made: model file and hash, settings, run time (layers, sidecars, zarr).
PROVENANCE = "napari_fmbff"
#: The scan a layer came from (the reader's record: series UIDs, affine, spacing).
SOURCE = "napari_fmbff_source"
#: Marks the layers our widgets made ("labels", "probability", "prompts", "clicks", "region").
OUTPUT = "napari_fmbff_output"
#: The image an output layer belongs to (its name).
IMAGE = "napari_fmbff_image"
#: A bundled sample (its look: endoscopy, dermoscopy, ultrasound).
SAMPLE = "napari_fmbff_sample"
#: A case opened from the corrections store: fine-tuning it again updates that case.
STORE_CASE = "napari_fmbff_store_case"
#: Names of an RTSTRUCT's ROIs and of a DICOM SEG's segments, by label value.
ROIS = "napari_fmbff_rois"
SEGMENTS = "napari_fmbff_segments"
#: The DICOM SEG / RTSTRUCT file a Labels layer was opened from.
SEG_FILE = "napari_fmbff_seg"
RTSTRUCT_FILE = "napari_fmbff_rtstruct"
#: Why a NIfTI opened as Labels (our sidecar, its header, or a mask beside its scan).
OPENED_AS_LABELS = "napari_fmbff_opened_as_labels"
