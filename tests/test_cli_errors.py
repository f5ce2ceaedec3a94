"""Bad user input ends every script in one `error: ...` line naming the file, split or key,
with exit status 1 (medvlmoe_jax/cli.py); a bug keeps its traceback. In-process where the
scripts' library calls can be made directly; one subprocess each for train and convert shows
the whole way to stderr (predict's, for its tiny-image warning, is in test_predict.py)."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT, shrunk_demo_config
from medvlmoe_jax import cli, sharding
from medvlmoe_jax.data import builder, pipeline, synthetic
from medvlmoe_jax.eval import run as eval_run
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train import trainer as trainer_lib


def one_line_error(fn, *args, also=()) -> str:
  """The `error: ...` line that `fn(*args)` ends a script with."""
  with pytest.raises(SystemExit) as exit_info:
    with cli.exit_on_bad_input(also):
      fn(*args)
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith("error: "), message
  assert "\n" not in message
  return message


def last_stderr_line(proc) -> str:
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  return proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- the wrapper


def test_multi_line_messages_become_one_line():
  e = ValueError("unknown config key(s):\n  model.moe.experts (did you mean "
                 "model.moe.num_experts?)\n  data.pth")
  assert cli.one_line(e) == ("unknown config key(s): model.moe.experts (did you mean "
                             "model.moe.num_experts?); data.pth")
  assert cli.one_line(FileNotFoundError()) == "FileNotFoundError"


@pytest.mark.parametrize("error", [cli.BadInputError("x.csv, row 3: bad"),
                                   FileNotFoundError("x.png: no such image file"),
                                   IsADirectoryError("x.png: a directory")])
def test_bad_input_exits_with_one_line(error):
  def fail():
    raise error
  assert one_line_error(fail) == f"error: {error}"


@pytest.mark.parametrize("error", [ValueError("shapes (3,) and (4,) differ"),
                                   KeyError("logits"), RuntimeError("bug")])
def test_bugs_keep_their_traceback(error):
  with pytest.raises(type(error)):
    with cli.exit_on_bad_input():
      raise error


def test_bad_input_error_is_a_value_error():
  from medvlmoe_jax.data.sources import BadInputError
  assert BadInputError is cli.BadInputError and issubclass(BadInputError, ValueError)


def test_dashed_flags_are_accepted():
  assert [cli.undash(a) for a in ["--skip-bad", "--out=a-b", "a-b", "--", "-v"]] == \
      ["--skip_bad", "--out=a-b", "a-b", "--", "-v"]


@pytest.mark.parametrize("script", ["launch/train.py", "launch/eval.py", "launch/predict.py",
                                    "launch/convert.py", "medvlmoe_jax/data/prep.py"])
def test_every_script_runs_through_cli(script):
  """Every entry point goes through cli.run (the data_prep scripts through prep.run)."""
  with open(os.path.join(ROOT, script)) as f:
    tree = ast.parse(f.read())
  calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
           and isinstance(n.func, ast.Attribute) and n.func.attr == "run"
           and isinstance(n.func.value, ast.Name) and n.func.value.id == "cli"]
  assert calls, f"{script} does not call cli.run"


# ---------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("built") / "synthetic")
  builder.build(synthetic.Synthetic, out, num_train=8, num_val=4, num_test=4, num_classes=3,
                seed=5, image_size=32)
  return out


def built_config(path):
  c = shrunk_demo_config()
  c.data.name, c.data.path = "tfds", path
  c.model.num_classes = 3
  return c


def test_matching_config_loads(built):
  assert len(pipeline.load_dataset(built_config(built)).splits["train"]) == 8


@pytest.mark.parametrize("case, overrides, expected", [
    ("missing", {"data.path": "/nonexistent/retinamnist28"}, "no such directory"),
    ("not built", {"data.path": "EMPTY"}, "holds no built dataset"),
    ("task", {"data.task": "multiclass"}, "the data's task is 'multilabel' but data.task="),
    ("classes", {"model.num_classes": 4}, "3 classes but model.num_classes=4"),
    ("image size", {"data.image_size": 24, "model.vision.image_size": 24},
     "prepared at 32 px but data.image_size=24"),
    ("no metadata", {"data.path": "NO_METADATA"}, "not a dataset built by data_prep"),
])
def test_train_names_the_data_path(built, tmp_path, case, overrides, expected):
  c = built_config(built)
  for key, value in overrides.items():
    if value == "EMPTY":
      (tmp_path / "empty").mkdir()
      (tmp_path / "empty" / "notes.txt").write_text("not a dataset")
      value = str(tmp_path / "empty")
    elif value == "NO_METADATA":     # a TFDS dataset that data_prep did not write
      value = str(tmp_path / "other")
      os.mkdir(value)
      for name in os.listdir(built):
        if name != "metadata.json":
          os.link(os.path.join(built, name), os.path.join(value, name))
    *parents, name = key.split(".")
    section = c
    for p in parents:
      section = section[p]
    section[name] = value
  message = one_line_error(train_and_evaluate, c, str(tmp_path / "run"))
  assert expected in message and c.data.path in message


def test_train_split_smaller_than_a_batch(built, tmp_path):
  c = built_config(built)
  c.data.batch_size = 16
  message = one_line_error(train_and_evaluate, c, str(tmp_path / "run"))
  assert message == (f"error: {built}: the train split has 8 examples, fewer than one batch "
                     "(data.batch_size=16)")


def test_train_cli_names_a_missing_data_path(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/train.py", "--config", "configs/demo.py", "--workdir",
       str(tmp_path / "w"), "--config.data.name=tfds", "--config.data.path=/nonexistent/ds"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  line = last_stderr_line(proc)
  assert line.startswith("error: data.path='/nonexistent/ds': no such directory"), line


# ---------------------------------------------------------------------------- eval


def test_eval_names_the_workdir(tmp_path):
  missing = str(tmp_path / "nope")
  assert f"{missing}/config.json not found" in one_line_error(eval_run.evaluate_workdir, missing)
  no_config = tmp_path / "no_config"
  (no_config / "checkpoints").mkdir(parents=True)
  message = one_line_error(eval_run.evaluate_workdir, str(no_config))
  assert f"{no_config}/config.json not found" in message
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  trainer_lib.save_config(shrunk_demo_config(), str(no_ckpt))
  message = one_line_error(eval_run.evaluate_workdir, str(no_ckpt))
  assert f"no checkpoints in {no_ckpt}/checkpoints" in message
  message = one_line_error(eval_run.evaluate_workdir, str(no_ckpt), "tset")
  assert "unknown split 'tset'" in message and "'test'" in message
  assert "not 'bset'" in one_line_error(eval_run.resolve_step, None, "bset")
  (no_config / "config.json").write_text('{"data": ')
  message = one_line_error(eval_run.evaluate_workdir, str(no_config))
  assert message.startswith(f"error: {no_config}/config.json: not a readable config")


def test_mesh_that_does_not_fit_the_devices_is_named():
  config = shrunk_demo_config()
  config.mesh.expert = 3
  message = one_line_error(sharding.make_mesh, config.mesh, config.model.moe.num_experts)
  assert "mesh.expert=3" in message


# ---------------------------------------------------------------------------- convert


def test_convert_cli_names_a_missing_tensor(tmp_path):
  """The converter's multi-line report of what does not fit, as one line."""
  from test_convert import _damaged
  src = _damaged(tmp_path, lambda s: s.pop("layers.1.fc2.bias"))
  proc = subprocess.run(
      [sys.executable, "launch/convert.py", "--text", src, "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  line = last_stderr_line(proc)
  assert line.startswith(f"error: text checkpoint {src}: missing tensors"), line
  assert "layers/1/mlp/fc2/bias" in line
  assert not os.path.exists(tmp_path / "out" / "text")


def test_convert_names_a_missing_source(tmp_path):
  from medvlmoe_jax.convert.encoders import convert
  missing = str(tmp_path / "no_such_model")
  message = one_line_error(convert, str(tmp_path / "out"), None, missing)
  assert message == f"error: {missing}: not a checkpoint directory"
  release = str(tmp_path / "release")
  os.mkdir(release)
  message = one_line_error(convert, str(tmp_path / "out"), None, None, release)
  assert os.path.join(release, "dict.txt") in message
