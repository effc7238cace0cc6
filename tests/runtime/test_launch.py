from __future__ import annotations

from tests.conftest import launch


def test_unknown_stage_lists_the_valid_stages_without_traceback():
  result = launch("--stage=nope")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert "--stage=nope" in result.stderr and "data|inspect" in result.stderr


def test_bad_flag_value_lists_choices():
  result = launch("--stage=data", "--precision=fp8")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "float32|mixed_float16|mixed_bfloat16" in result.stderr


def test_helpfull_documents_every_tfpets_flag():
  result = launch("--helpfull")  # absl exits 1 after printing help
  from absl import flags

  import tfpets.cli  # noqa: F401  (defines the flags in this process too)

  names = [
    f.name
    for module, fs in flags.FLAGS.flags_by_module_dict().items()
    if module.startswith("tfpets")
    for f in fs
  ]
  assert len(names) > 20
  for name in names:
    assert f"--{name}:" in result.stdout or f"--[no]{name}:" in result.stdout, name


def test_user_error_is_one_line_and_flags_are_saved_as_a_reproducing_flagfile(tmp_path):
  workdir = tmp_path / "run"
  result = launch(
    "--stage=inspect",
    f"--records={tmp_path / 'missing'}",
    f"--workdir={workdir}",
    "--seed=7",
    "--strategy=cpu",
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("tfpets: error: --records=")
  assert "Traceback" not in result.stderr
  saved = (workdir / "flags.txt").read_text()
  assert "--seed=7" in saved and "--stage=inspect" in saved and f"--workdir={workdir}" in saved
  again = launch(f"--flagfile={workdir / 'flags.txt'}")
  assert again.returncode == 2
  assert (workdir / "flags.txt").read_text() == saved


def test_launcher_defaults_to_the_bfc_allocator_but_keeps_the_users_choice():
  from tfpets import launch

  environ = {}
  launch.set_allocator_defaults(environ)
  assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "true"}
  environ = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
  launch.set_allocator_defaults(environ)
  assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
