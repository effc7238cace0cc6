"""tensorflow-datasets `oxford_iiit_pet` and `cars196`, prepared offline from local archives.

Nothing here downloads. A dataset is used when it is already prepared in
`data_dir`; otherwise it is prepared from the original archives, found either

  * in a manual directory (`tfds_manual_dir`, default `<data_dir>/downloads/manual`) under their
    original names: TFDS hashes them and raises NonMatchingChecksumError on any difference, or
  * in the download cache `<data_dir>/downloads/<name>/<cache name>` with a `.INFO` file beside it:
    TFDS takes those as already downloaded and does not hash them. `stage_download_cache` puts
    archives there (as symlinks); `tfds_verify_checksums=False` does so from the manual directory,
    for mirrors whose re-packed archives differ from the registered checksums.

If neither the prepared dataset nor all archives are present, a FileNotFoundError names the
directories and the expected file names before TFDS could try the network.

Records carry the encoded image in `image_bytes` (all of the selected splits are held in memory:
about 0.8 GB for oxford_iiit_pet, 1.9 GB for cars196) and the path
`tfds:<name>/<split>/<file name or id>`. Boxes come back from TFDS's normalised (ymin, xmin, ymax,
xmax) to pixels using the image size in the bytes' header (no pixel decode), i.e. in the stored,
un-rotated pixel frame that TFDS normalised with; the all-zero box TFDS stores for Oxford test
images means "no box". Classes are those present in any prepared split, in TFDS label order, so
per-split loads share one label space.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.download import download_manager as tfds_download_manager
from tensorflow_datasets.core.download import resource as tfds_resource

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, folders

SPLITS = ("all", "train", "test")


class ChecksumMismatchError(ValueError):
  """A local archive is not byte-identical to the one TFDS registers."""


@dataclasses.dataclass(frozen=True)
class _DatasetFields:
  id_key: str  # feature naming the example ('file_name' or 'id')
  box_key: str  # normalised BBoxFeature
  species_key: Optional[str]  # ClassLabel of the species, if any
  encoded_keys: Tuple[str, ...]  # image features to keep encoded


_DATASETS: Dict[str, _DatasetFields] = {
  "oxford_iiit_pet": _DatasetFields(
    "file_name", "head_bbox", "species", ("image", "segmentation_mask")
  ),
  "cars196": _DatasetFields("id", "bbox", None, ("image",)),
}


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def load_tfds(
  location: str,
  data_dir: Optional[str] = None,
  tfds_manual_dir: Optional[str] = None,
  split: str = "all",
  tfds_verify_checksums: bool = True,
  **unused_options,
) -> SourceResult:
  """Loads `tfds:<name>` (location = name, optionally `name:version`), preparing it offline."""
  name = location.split(":", 1)[0]
  if name not in _DATASETS:
    raise ValueError(f"tfds:{location}: unsupported dataset; supported: {', '.join(_DATASETS)}")
  if split not in SPLITS:
    raise ValueError(f"tfds split must be one of {', '.join(SPLITS)}, got {split!r}")
  data_dir = os.path.abspath(data_dir or default_data_dir())
  builder = tfds.builder(location, data_dir=data_dir)
  if not builder.is_prepared():
    _prepare_offline(builder, data_dir, tfds_manual_dir, tfds_verify_checksums)
  return _read_records(builder, name, split, location)


def expected_archives(name: str) -> Dict[str, str]:
  """URL -> original file name of every archive the builder needs."""
  return {url: info.filename for url, info in tfds.builder_cls(name).url_infos.items()}


def download_cache_path(name: str, url: str, data_dir: str) -> str:
  """Where TFDS looks for an already-downloaded `url` (the cache-name route)."""
  info = tfds.builder_cls(name).url_infos[url]
  return os.path.join(data_dir, "downloads", name, tfds_resource.get_dl_fname(url, info.checksum))


def stage_download_cache(name: str, archives_dir: str, data_dir: str) -> List[str]:
  """Symlinks the original archives into TFDS's download cache with `.INFO` files.

  TFDS then treats them as downloaded and does not hash them. Returns the staged paths.
  """
  missing = [
    f for f in expected_archives(name).values() if not os.path.isfile(os.path.join(archives_dir, f))
  ]
  if missing:
    raise FileNotFoundError(
      f"{archives_dir}: missing archive(s) for tfds:{name}: {', '.join(missing)}"
    )
  staged = []
  for url, info in tfds.builder_cls(name).url_infos.items():
    source = os.path.abspath(os.path.join(archives_dir, info.filename))
    target = download_cache_path(name, url, data_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(target) and os.readlink(target) != source:
      os.remove(target)
    if not os.path.lexists(target):
      os.symlink(source, target)
    with open(target + ".INFO", "w", encoding="utf-8") as f:
      json.dump(
        {
          "urls": [url],
          "dataset_names": [name],
          "original_fname": info.filename,
          "url_info": info.asdict(),
        },
        f,
        sort_keys=True,
      )
    staged.append(target)
  return staged


def _prepare_offline(
  builder, data_dir: str, manual_dir: Optional[str], verify_checksums: bool
) -> None:
  name = builder.name
  manual_dir = os.path.abspath(manual_dir or os.path.join(data_dir, "downloads", "manual"))
  missing = [
    (url, filename)
    for url, filename in expected_archives(name).items()
    if not os.path.isfile(os.path.join(manual_dir, filename))
    and not _is_cached(download_cache_path(name, url, data_dir))
  ]
  if missing:
    names = ", ".join(filename for _, filename in missing)
    raise FileNotFoundError(
      f"tfds:{name} is not prepared in {data_dir} and archive(s) {names} were not found in "
      f"{manual_dir} (nor in the download cache {os.path.join(data_dir, 'downloads', name)}). "
      f"Put the original files ({', '.join(expected_archives(name).values())}) in that "
      "directory or pass --tfds_manual_dir; nothing is downloaded."
    )
  if not verify_checksums:
    stage_download_cache(name, manual_dir, data_dir)
    # The manual directory wins over the cache in TFDS and would be hashed; point TFDS at a
    # directory that cannot hold the original names so that the staged cache entries are used.
    manual_dir = os.path.join(data_dir, "downloads", name)
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
  except tfds_download_manager.NonMatchingChecksumError as e:
    raise ChecksumMismatchError(
      f"tfds:{name}: an archive in {manual_dir} differs from the checksum TFDS registers for "
      "it. Use the original release files, or pass tfds_verify_checksums=False to use these "
      f"unhashed (e.g. a re-packed mirror). TFDS says: {e}"
    ) from e


def _is_cached(path: str) -> bool:
  return os.path.exists(path) and os.path.exists(path + ".INFO")


def _read_records(builder, name: str, split: str, location: str) -> SourceResult:
  fields = _DATASETS[name]
  features = builder.info.features
  all_names = features["label"].names
  species_names = features[fields.species_key].names if fields.species_key else None
  decoders = {key: tfds.decode.SkipDecoding() for key in fields.encoded_keys}
  records, present = [], set()
  for split_name in sorted(builder.info.splits):
    dataset = builder.as_dataset(split=split_name, decoders=decoders, shuffle_files=False)
    for example in tfds.as_numpy(dataset):
      label = int(example["label"])
      present.add(label)
      if split in ("all", split_name):
        records.append(_record(example, fields, name, split_name, all_names, species_names))
  kept_labels = sorted(present)
  label_of = {label: i for i, label in enumerate(kept_labels)}
  for record in records:
    record.label = label_of[record.label]
  rejects = rejects_lib.RejectsReport()
  folders.require_records(records, rejects, f"tfds:{location}")
  return SourceResult(records, [all_names[i] for i in kept_labels], rejects)


def _record(
  example: dict,
  fields: _DatasetFields,
  name: str,
  split_name: str,
  all_names: List[str],
  species_names: Optional[List[str]],
) -> ImageRecord:
  image_bytes = bytes(example["image"])
  identifier = example[fields.id_key].decode("utf-8")
  label = int(example["label"])
  species = species_names[int(example[fields.species_key])].lower() if species_names else ""
  return ImageRecord(
    path=f"tfds:{name}/{split_name}/{identifier}",
    label=label,
    class_name=all_names[label],
    box=_pixel_box(example[fields.box_key], image_bytes),
    species=species,
    source="tfds",
    split=split_name,
    image_bytes=image_bytes,
  )


def _pixel_box(normalised: np.ndarray, image_bytes: bytes) -> Optional[np.ndarray]:
  """TFDS (ymin, xmin, ymax, xmax) in [0, 1] -> [xmin, ymin, xmax, ymax] pixels; zeros -> None."""
  if not np.any(normalised):
    return None
  with Image.open(io.BytesIO(image_bytes)) as img:
    width, height = img.size
  ymin, xmin, ymax, xmax = (float(v) for v in normalised)
  return np.array([xmin * width, ymin * height, xmax * width, ymax * height], np.float32)
