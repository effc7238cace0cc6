"""The experiment's plan: its steps, their deps and records, and the files write_plan writes."""

from __future__ import annotations

import json
import os
import re

import pytest
from absl import flags as absl_flags

from tfpets.errors import ArgumentError
from tfpets.experiment import plan

SMALL = dict(subsets=("0.1", "1.0"), variants=("original", "cropped_augmented"), repeats=2)


def names_of(steps):
  return [s.name for s in steps]


@pytest.fixture
def small(tmp_path):
  root = str(tmp_path / "exp")
  return plan.build_plan(plan.ExperimentConfig(**SMALL), root), root


def test_small_matrix_has_exactly_the_experiments_steps(small):
  steps, _ = small
  expected = {"data/s10", "data/s100", "crop/s10", "crop/s100", "report"}
  for p in ("s10", "s100"):
    expected |= {f"{kind}/cropped_augmented/{p}" for kind in ("gan", "fid", "augment")}
    for v in ("original", "cropped_augmented"):
      expected |= {f"{kind}/{v}/{p}/r{k}" for kind in ("classify", "evaluate") for k in (0, 1)}
  assert len(names_of(steps)) == len(expected) == 27
  assert set(names_of(steps)) == expected


def test_small_matrix_deps(small):
  steps, _ = small
  deps = {s.name: set(s.deps) for s in steps}
  for p in ("s10", "s100"):
    v = "cropped_augmented"
    assert deps[f"data/{p}"] == set()
    assert deps[f"crop/{p}"] == {f"data/{p}"}
    assert deps[f"gan/{v}/{p}"] == {f"crop/{p}"}
    assert deps[f"fid/{v}/{p}"] == {f"crop/{p}", f"gan/{v}/{p}"}
    assert deps[f"augment/{v}/{p}"] == {f"crop/{p}", f"gan/{v}/{p}"}
    for k in (0, 1):
      assert deps[f"classify/original/{p}/r{k}"] == {f"data/{p}"}
      assert deps[f"evaluate/original/{p}/r{k}"] == {f"classify/original/{p}/r{k}", f"data/{p}"}
      assert deps[f"classify/{v}/{p}/r{k}"] == {f"augment/{v}/{p}"}
      assert deps[f"evaluate/{v}/{p}/r{k}"] == {f"classify/{v}/{p}/r{k}", f"crop/{p}"}
  report = {n for n in deps if n.startswith(("fid/", "evaluate/"))}
  assert len(report) == 10 and deps["report"] == report


def test_order_is_topological(small):
  steps, _ = small
  position = {name: i for i, name in enumerate(names_of(steps))}
  for step in steps:
    for dep in step.deps:
      assert position[dep] < position[step.name], (dep, step.name)
  assert steps[-1].name == "report"


def test_each_step_reads_the_records_of_its_variant(small):
  steps, root = small
  by_name = {s.name: s for s in steps}
  for p in ("s10", "s100"):
    data, crop = f"{root}/data/{p}", f"{root}/crop/{p}"
    grown = f"{root}/augment/cropped_augmented/{p}"
    assert by_name[f"crop/{p}"].flags["records"] == data
    assert by_name[f"gan/cropped_augmented/{p}"].flags["records"] == crop
    assert by_name[f"augment/cropped_augmented/{p}"].flags["records"] == crop
    for k in (0, 1):
      original = by_name[f"classify/original/{p}/r{k}"]
      cropped = by_name[f"classify/cropped_augmented/{p}/r{k}"]
      assert original.flags["records"] == data and cropped.flags["records"] == grown
      assert original.flags["seed"] == cropped.flags["seed"] == k
      for variant, real in (("original", data), ("cropped_augmented", crop)):
        evaluate = by_name[f"evaluate/{variant}/{p}/r{k}"]
        assert evaluate.flags["records"] == real
        assert evaluate.flags["classifier"] == f"{root}/classify/{variant}/{p}/r{k}"
        assert evaluate.flags["cls_eval_split"] == "test"


def test_no_synthetic_image_ever_reaches_a_test_split(small):
  steps, root = small
  augment_dir = os.path.join(root, "augment")
  evaluations = [s for s in steps if s.stage == "evaluate"]
  assert len(evaluations) == 8
  for step in evaluations:
    values = [str(v) for v in (*step.flags.values(), *step.defaults.values())]
    assert not any(v.startswith(augment_dir) for v in values), step.name
    # Nor through a dep: an evaluation reads only its classifier and the real records.
    assert not any(d.startswith("augment/") for d in step.deps), step.name


def test_cells_and_outputs(small):
  steps, _ = small
  by_name = {s.name: s for s in steps}
  assert by_name["data/s10"].cell == {"subset": "0.1"}
  assert by_name["gan/cropped_augmented/s100"].cell == {
    "variant": "cropped_augmented",
    "subset": "1.0",
  }
  assert by_name["evaluate/original/s100/r1"].cell == {
    "variant": "original",
    "subset": "1.0",
    "repeat": 1,
  }
  assert by_name["report"].cell == {} and by_name["report"].collects
  # Only the crops feed a GAN here: the data steps need no StyleGAN records.
  assert by_name["data/s10"].outputs == ("records/shards/manifest.json",)
  assert by_name["data/s10"].defaults["data_gan_resolution"] == 0
  assert "records/stylegan" in by_name["crop/s10"].outputs
  assert by_name["evaluate/original/s10/r0"].outputs == (
    "reports/evaluate.json",
    "reports/metrics.json",
  )


def test_report_step(small):
  steps, root = small
  report = steps[-1]
  assert report.stage == "experiment"
  assert report.flags == {"workdir": root, "experiment_report_only": True}
  assert report.outputs == ("results/results.json", "results/README.md")


def test_variants_decide_which_stages_appear(tmp_path):
  original = plan.build_plan(plan.ExperimentConfig(variants=("original",)), tmp_path)
  assert {s.stage for s in original} == {"data", "classify", "evaluate", "experiment"}
  cropped = plan.build_plan(
    plan.ExperimentConfig(variants=("cropped",), subsets=("0.5",)), tmp_path
  )
  assert names_of(cropped) == [
    "data/s50",
    "crop/s50",
    "classify/cropped/s50/r0",
    "evaluate/cropped/s50/r0",
    "report",
  ]
  assert cropped[2].flags["records"] == cropped[3].flags["records"] == cropped[1].workdir
  augmented = plan.build_plan(plan.ExperimentConfig(variants=("augmented",)), tmp_path)
  assert "crop" not in {s.stage for s in augmented}
  data = next(s for s in augmented if s.name == "data/s10")
  assert "records/stylegan" in data.outputs and data.defaults["data_gan_resolution"] == 32


def test_conditional_labels(small):
  steps, _ = small
  by_name = {s.name: s for s in steps}
  assert by_name["gan/cropped_augmented/s10"].flags["gan_cond"] is True
  augment = by_name["augment/cropped_augmented/s10"]
  assert augment.flags["aug_label_from"] == "conditional" and "aug_classifier" not in augment.flags


def test_classifier_labels_come_from_the_original_classifier(tmp_path):
  config = plan.ExperimentConfig(
    subsets=("0.5",), variants=("augmented", "original"), repeats=2, aug_label_from="classifier"
  )
  steps = plan.build_plan(config, tmp_path)
  by_name = {s.name: s for s in steps}
  augment = by_name["augment/augmented/s50"]
  assert augment.deps == ("data/s50", "gan/augmented/s50", "classify/original/s50/r0")
  assert augment.flags["aug_label_from"] == "classifier"
  assert augment.flags["aug_classifier"] == str(tmp_path / "classify/original/s50/r0/models")
  assert by_name["gan/augmented/s50"].flags["gan_cond"] is False
  position = names_of(steps).index
  assert position("classify/original/s50/r0") < position("augment/augmented/s50")


def test_paths_are_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "pets").mkdir()
  config = plan.ExperimentConfig(
    data="folder:pets",
    variants=("cropped",),
    crop_use_annotations=False,
    detector="runs/landmarks",
  )
  steps = plan.build_plan(config, "exp")
  by_name = {s.name: s for s in steps}
  assert by_name["data/s10"].flags["data"] == f"folder:{tmp_path / 'pets'}"
  assert by_name["crop/s10"].flags["detector"] == str(tmp_path / "runs/landmarks")
  assert by_name["crop/s10"].flags["crop_use_annotations"] is False
  for step in steps:
    assert os.path.isabs(step.workdir) and step.workdir.startswith(str(tmp_path / "exp"))


def test_subset_names():
  names = [plan.subset_name(s) for s in ("0.1", "0.5", "1.0", "0.125", "10%")]
  assert names == ["s10", "s50", "s100", "s12.5", "s10"]


# ------------------------------------------------------------------------------------------------
# Files.
# ------------------------------------------------------------------------------------------------

FLAG_LINE = re.compile(r"--[A-Za-z][A-Za-z0-9_]*(=.*)?")


def parse_flagfile(path):
  """The flag lines of a flagfile; asserts every other line is a comment."""
  lines = []
  for line in open(path).read().splitlines():
    if line.startswith("#"):
      continue
    assert FLAG_LINE.fullmatch(line), line
    lines.append(line)
  return lines


def test_flagfiles_layout_and_precedence(tmp_path):
  base = tmp_path / "gan_base.flags"
  base.write_text("--gan_kimg=99\n--gan_res=64\n--seed=7\n")
  config = plan.ExperimentConfig(
    subsets=("0.5",),
    variants=("augmented",),
    seed=3,
    stage_flags={"gan": {"gan_preset": "cpu", "gan_kimg": 20}, "metrics": {"batch_size": 8}},
    stage_flagfiles={"gan": (str(base),)},
  )
  root = tmp_path / "exp"
  steps = plan.build_plan(config, root)
  written = plan.write_plan(steps, root)
  assert set(written["flagfiles"]) == set(names_of(steps))
  for step in steps:
    path = written["flagfiles"][step.name]
    assert path == str(root / "plan/steps" / (step.name.replace("/", "__") + ".flags"))
    text = open(path).read()
    assert text.startswith(f"# step: {step.name}\n# deps: ")
    lines = parse_flagfile(path)
    assert lines[0] == f"--stage={step.stage}"
    assert f"--workdir={step.workdir}" in lines
  gan = parse_flagfile(written["flagfiles"]["gan/augmented/s50"])
  assert gan == [
    "--stage=gan",
    "--gan_res=32",
    "--gan_preset=cpu",
    "--gan_kimg=20",
    f"--flagfile={base}",
    f"--workdir={root / 'gan/augmented/s50'}",
    f"--records={root / 'data/s50'}",
    "--seed=3",
    "--gan_cond",
  ]
  fid = parse_flagfile(written["flagfiles"]["fid/augmented/s50"])
  assert "--metrics_names=fid2k_full" in fid and "--batch_size=8" in fid

  # absl reads it as the launcher would: the user's flagfile beats stage_flags and the defaults,
  # the plan's own flags beat the flagfile.
  values = absl_flags.FlagValues()
  for name in ("stage", "workdir", "records", "gan_preset"):
    absl_flags.DEFINE_string(name, "", "", flag_values=values)
  for name in ("seed", "gan_res", "gan_kimg"):
    absl_flags.DEFINE_integer(name, 0, "", flag_values=values)
  absl_flags.DEFINE_boolean("gan_cond", False, "", flag_values=values)
  values(["prog", f"--flagfile={written['flagfiles']['gan/augmented/s50']}"])
  assert (values.gan_kimg, values.gan_res, values.seed) == (99, 64, 3)
  assert values.gan_preset == "cpu" and values.gan_cond is True
  assert values.records == str(root / "data/s50")


def test_flag_lines():
  assert plan.flag_line("gan_cond", True) == "--gan_cond"
  assert plan.flag_line("gan_cond", False) == "--nogan_cond"
  assert (
    plan.flag_line("metrics_names", ["fid2k_full", "kid2k"]) == "--metrics_names=fid2k_full,kid2k"
  )
  assert plan.flag_line("aug_ratio", 0.5) == "--aug_ratio=0.5"


def parse_makefile(path):
  """{target: (ordinary prerequisites, order-only prerequisites, recipe lines)}."""
  rules, current = {}, None
  for line in open(path).read().splitlines():
    if line.startswith("\t"):
      rules[current][2].append(line[1:])
    elif line and not line.startswith(("#", ".PHONY")):
      target, _, rest = line.partition(":")
      ordinary, _, order_only = rest.partition("|")
      rules[target] = (ordinary.split(), order_only.split(), [])
      current = target
  return rules


def test_makefile_targets_and_prerequisites(small):
  steps, root = small
  written = plan.write_plan(steps, root, launcher=("fake-launch", "--x"))
  rules = parse_makefile(written["makefile"])
  markers = {s.name: plan.marker_path(root, s.name) for s in steps}
  assert markers["crop/s10"] == os.path.join(root, "plan/done/crop/s10.done")
  assert set(rules) == {"all", *markers.values()}
  assert rules["all"][0] == [markers[s.name] for s in steps]
  for step in steps:
    ordinary, order_only, recipe = rules[markers[step.name]]
    deps = [markers[d] for d in step.deps]
    if step.collects:
      assert ordinary == deps and order_only == []
    else:
      assert ordinary == [] and order_only == deps
    flagfile = plan.flagfile_path(root, step.name)
    run = recipe[-1]
    assert f"fake-launch --x --flagfile={flagfile} > {plan.log_path(root, step.name)} 2>&1" in run
    assert run.endswith(f"runner mark {root} {step.name} --started=$$start")


def test_plan_json_round_trips(small):
  steps, root = small
  written = plan.write_plan(steps, root, launcher=("launch",))
  assert plan.load_plan(root) == steps
  records = json.load(open(written["plan"]))
  assert records["root"] == root
  for step, record in zip(steps, records["steps"]):
    assert record["name"] == step.name and record["deps"] == list(step.deps)
    assert record["outputs"] == list(step.outputs) and record["cell"] == step.cell
    assert record["command"] == ["launch", f"--flagfile={written['flagfiles'][step.name]}"]
    assert record["marker"] == plan.marker_path(root, step.name)


def test_no_makefile_for_a_root_make_cannot_name(tmp_path):
  steps = plan.build_plan(plan.ExperimentConfig(variants=("original",)), tmp_path / "a b")
  written = plan.write_plan(steps, tmp_path / "a b")
  assert written["makefile"] is None and os.path.isfile(written["plan"])


def test_topological_order_refuses_bad_graphs():
  a = plan.Step("a", "data", {"workdir": "/a"}, deps=("b",))
  b = plan.Step("b", "data", {"workdir": "/b"}, deps=("a",))
  with pytest.raises(ArgumentError, match="cycle"):
    plan.topological_order([a, b])
  with pytest.raises(ArgumentError, match="not a step"):
    plan.topological_order([a])
  with pytest.raises(ArgumentError, match="two steps"):
    plan.topological_order([b, b])
  assert names_of(
    plan.topological_order(
      [
        plan.Step("c", "data", {"workdir": "/c"}, deps=("d",)),
        plan.Step("d", "data", {"workdir": "/d"}),
      ]
    )
  ) == ["d", "c"]


# ------------------------------------------------------------------------------------------------
# Config validation.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, field, message",
  [
    (dict(data="nothing:x"), "data", "unknown dataset kind"),
    (dict(data=""), "data", "dataset spec"),
    (dict(subsets=("0.1", "0.10")), "subsets", "the same subset twice"),
    (dict(subsets=("20",)), "subsets", "a count of images"),
    (dict(subsets=("1.5",)), "subsets", r"\(0, 1\]"),
    (dict(subsets=(0.1,)), "subsets", "written as a string"),
    (dict(subsets=()), "subsets", "non-empty"),
    (dict(variants=("original", "ganned")), "variants", "not a variant"),
    (dict(variants=("original", "original")), "variants", "twice"),
    (dict(repeats=0), "repeats", "at least 1"),
    (dict(seed=-1), "seed", "at least 0"),
    (dict(crop_use_annotations="yes"), "crop_use_annotations", "True or False"),
    (dict(crop_use_annotations=False), "detector", "landmark detector"),
    (dict(detector="runs/landmarks"), "detector", "only read when"),
    (dict(gan_resolution=48), "gan_resolution", "power of two"),
    (dict(gan_resolution=4), "gan_resolution", "at least 8"),
    (dict(crop_size=48), "crop_size", "power of two"),
    (dict(crop_size=16), "crop_size", "at least that large"),
    (dict(crop_size=4, variants=("cropped",)), "crop_size", "at least 8"),
    (dict(stage_flags={"crop": {"crop_size": 64}}), "stage_flags", "the plan sets"),
    (dict(fid_metric="kid50k_full"), "fid_metric", "not KID"),
    (dict(fid_metric="fid_many"), "fid_metric", "unknown metric"),
    (dict(aug_ratio=0.0), "aug_ratio", "positive"),
    (dict(aug_label_from="per_class"), "aug_label_from", "one of"),
    (dict(aug_label_from="classifier", variants=("augmented",)), "aug_label_from", "original"),
    (dict(stage_flags={"train": {"x": 1}}), "stage_flags", "not a stage"),
    (dict(stage_flags={"gan": {"records": "/x"}}), "stage_flags", "the plan sets"),
    (dict(stage_flags={"classify": {"seed": 4}}), "stage_flags", "the plan sets"),
    (dict(stage_flags={"classify": {"--model": "vit"}}), "stage_flags", "not a flag name"),
    (dict(stage_flags={"classify": {"model": None}}), "stage_flags", "a bool, number"),
    (dict(stage_flags={"classify": {"model": "a\nb"}}), "stage_flags", "line break"),
    (dict(stage_flagfiles={"gan": "x.flags"}), "stage_flagfiles", "a tuple"),
    (dict(stage_flagfiles={"gan": ("/no/such.flags",)}), "stage_flagfiles", "no such flagfile"),
  ],
)
def test_config_errors_name_the_field(kwargs, field, message):
  with pytest.raises(ArgumentError, match=message) as error:
    plan.ExperimentConfig(**kwargs)
  assert error.value.argument == field


def test_stage_flags_may_change_the_defaults(tmp_path):
  config = plan.ExperimentConfig(
    stage_flags={"data": {"data_gan_resolution": 128}, "gan": {"gan_res": 16}}
  )
  steps = plan.build_plan(config, tmp_path)
  by_name = {s.name: s for s in steps}
  assert by_name["data/s10"].defaults == {"data_gan_resolution": 128}
  assert by_name["gan/augmented/s10"].defaults == {"gan_res": 16}


def test_crop_size(tmp_path):
  default = plan.build_plan(plan.ExperimentConfig(variants=("cropped",)), tmp_path)
  crops = [s for s in default if s.stage == "crop"]
  assert len(crops) == 3 and all(s.flags["crop_size"] == 32 for s in crops)
  config = plan.ExperimentConfig(crop_size=64, variants=("cropped_augmented",))
  crop = next(s for s in plan.build_plan(config, tmp_path) if s.stage == "crop")
  assert crop.flags["crop_size"] == 64 and crop.defaults == {}
