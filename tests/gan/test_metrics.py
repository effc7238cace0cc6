"""FID/KID against independent numpy computations, the real-feature cache, both feature networks
(the frozen-graph loader on a handmade graph with the Inception tensor names) and
`--stage=metrics` end to end on a tiny demo generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from tests.conftest import launch
from tfpets.data.prepare import lod_pyramid
from tfpets.data.tfrecord import multires
from tfpets.gan import inception, networks, presets
from tfpets.gan import metrics as M

# --- Metric names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,kind,num_gen,max_reals",
  [
    ("fid50k_full", "fid", 50000, None),
    ("kid50k_full", "kid", 50000, 1_000_000),
    ("fid50k", "fid", 50000, 50000),
    ("fid2k", "fid", 2000, 2000),
    ("fid5k_full", "fid", 5000, None),
    ("kid1k", "kid", 1000, 1000),
    ("fid500", "fid", 500, 500),
  ],
)
def test_metric_names_give_generated_and_real_counts(name, kind, num_gen, max_reals):
  assert M.parse_metric_name(name) == M.MetricSpec(name, kind, num_gen, max_reals)


@pytest.mark.parametrize(
  "name", ["fid", "fid0k", "fid50k_fulll", "is50k", "FID50k", "fid2k_seeded"]
)
def test_bad_metric_names_are_a_value_error_naming_them(name):
  with pytest.raises(ValueError, match=repr(name)):
    M.parse_metric_name(name)


# --- FID and KID ---------------------------------------------------------------------------------


def fid_by_sqrtm(mu1, s1, mu2, s2):
  """The official formula as written: a general matrix square root of S1 S2, real part."""
  root = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.real(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)))


def test_fid_of_diagonal_gaussians_is_the_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  var1, var2 = rng.uniform(0.2, 3, 6), rng.uniform(0.2, 3, 6)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = M.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(want, rel=1e-9)
  # Sampled: the statistics of 40k draws approach the closed form.
  x1 = mu1 + np.sqrt(var1) * rng.standard_normal((40000, 6))
  x2 = mu2 + np.sqrt(var2) * rng.standard_normal((40000, 6))
  sampled = M.frechet_distance(*M.feature_statistics(x1), *M.feature_statistics(x2))
  assert sampled == pytest.approx(want, abs=0.05)


def test_fid_matches_the_official_sqrtm_formula_on_correlated_gaussians():
  rng = np.random.default_rng(1)
  a1, a2 = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
  x1 = rng.standard_normal((500, 8)) @ a1 + 1.0
  x2 = rng.standard_normal((300, 8)) @ a2
  mu1, s1 = x1.mean(0), np.cov(x1, rowvar=False)
  mu2, s2 = x2.mean(0), np.cov(x2, rowvar=False)
  got = M.frechet_distance(*M.feature_statistics(x1), *M.feature_statistics(x2))
  assert got == pytest.approx(fid_by_sqrtm(mu1, s1, mu2, s2), rel=1e-7)
  same = M.frechet_distance(*M.feature_statistics(x1), *M.feature_statistics(x1))
  assert abs(same) < 1e-8


def mmd2_unbiased(x, y):
  """Direct sums over index pairs, kernel (a.b / d + 1)^3."""
  d, n = x.shape[1], len(x)
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
  return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
  rng = np.random.default_rng(2)
  real, gen = rng.normal(size=(25, 5)), rng.normal(0.4, 1.2, size=(25, 5))
  # One subset holding every vector: a permutation, which leaves the MMD unchanged.
  got = M.kernel_distance(real, gen, num_subsets=1, max_subset_size=1000)
  assert got == pytest.approx(mmd2_unbiased(gen, real), rel=1e-10)
  averaged = M.kernel_distance(real, gen, num_subsets=7, max_subset_size=1000)
  assert averaged == pytest.approx(got, rel=1e-10)


def test_kid_subsets_are_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(600, 16))
  same = M.kernel_distance(real, rng.normal(size=(500, 16)), num_subsets=20, max_subset_size=100)
  other = M.kernel_distance(
    real, rng.normal(0.5, 1.0, size=(500, 16)), num_subsets=20, max_subset_size=100
  )
  assert abs(same) < 0.02 < other


def test_to_uint8_rounds_and_saturates_like_the_official_conversion():
  x = np.array([-1.5, -1.0, -0.99, 0.0, 0.003, 0.5, 1.0, 1.2, np.float32(1 / 255)], np.float32)
  want = np.clip(np.floor(x.astype(np.float64) * 127.5 + 128.0), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(M.to_uint8(tf.constant(x)).numpy(), want)


# --- Feature networks ----------------------------------------------------------------------------


def images(n, size=16, channels=3, seed=0):
  """Smooth colour gradients with noise, uint8 NHWC."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = np.stack([xx, yy, xx * yy][:channels], -1)
  out = base * rng.uniform(80, 255, (n, 1, 1, channels)) + rng.normal(0, 12, (n, size, size, 1))
  return np.clip(out, 0, 255).astype(np.uint8)


def handmade_inception_graph(resize=35, width=6):
  """A small frozen graph with the 2015-12-05 graph's input path and tensor names.

  DecodeJpeg/contents -> DecodeJpeg -> Cast -> ExpandDims -> ResizeBilinear -> Sub 128 -> Mul 1/128
  -> Conv2D -> BatchNormWithGlobalNormalization -> Relu -> Concat (v1) -> AvgPool `pool_3` ->
  `pool_3/_reshape` [1, 2 width] -> softmax, with the 2015 producer version, so the deprecated
  batch-norm op runs in a Session as it did in the original.
  """
  rng = np.random.RandomState(5)
  const = lambda value, name: tf.constant(np.asarray(value, np.float32), name=name)
  graph = tf.Graph()
  with graph.as_default():
    contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
    pixels = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
    batch = tf.expand_dims(tf.cast(pixels, tf.float32, name="Cast"), 0, name="ExpandDims")
    size = tf.constant([resize, resize], name="ResizeBilinear/size")
    x = tf.raw_ops.ResizeBilinear(images=batch, size=size, name="ResizeBilinear")
    x = tf.multiply(
      tf.subtract(x, const(128, "Sub/y"), name="Sub"), const(1 / 128, "Mul/y"), name="Mul"
    )
    x = tf.nn.conv2d(x, const(rng.randn(3, 3, 3, width), "conv/w"), 2, "VALID", name="conv/Conv2D")
    bn_inputs = [
      const(rng.randn(width), "conv/mean"),
      const(rng.uniform(0.5, 2, width), "conv/var"),
      const(rng.randn(width), "conv/beta"),
      const(rng.uniform(0.5, 2, width), "conv/gamma"),
    ]
    x = tf.identity(x, name="conv/batchnorm")  # becomes the deprecated op below
    x = tf.nn.relu(x, name="conv")
    x = tf.raw_ops.Concat(concat_dim=tf.constant(3, name="mixed/dim"), values=[x, -x], name="mixed")
    pool = tf.nn.avg_pool2d(x, (resize - 3) // 2 + 1, 1, "VALID", name="pool_3")
    flat = tf.reshape(pool, [1, 2 * width], name="pool_3/_reshape")
    tf.nn.softmax(tf.matmul(flat, const(rng.randn(2 * width, 4), "softmax/w")), name="softmax")
  graph_def = graph.as_graph_def()
  graph_def.versions.producer = 8
  for node in graph_def.node:
    if node.name == "conv/batchnorm":
      node.op = "BatchNormWithGlobalNormalization"
      node.input.extend(t.op.name for t in bn_inputs)
      node.attr["variance_epsilon"].f = 1e-3
      node.attr["scale_after_normalization"].b = True
  return graph_def


def run_graph_directly(graph_def, batch):
  """pool_3 of each image fed alone as the graph expects, in a TF1 session."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:
    return np.stack(
      [
        session.run("pool_3:0", {"ExpandDims:0": image[None].astype(np.float32)}).reshape(-1)
        for image in batch
      ]
    )


def test_inception_loader_feeds_expanddims_and_reads_pool_3(tmp_path):
  graph_def = handmade_inception_graph()
  path = tmp_path / "classify_image_graph_def.pb"
  path.write_bytes(graph_def.SerializeToString())
  network = inception.load_feature_network(str(path))
  batch = images(5, size=20)
  got = network.features(batch)
  assert network.dim == 12 and got.shape == (5, 12)
  np.testing.assert_allclose(got, run_graph_directly(graph_def, batch), rtol=1e-5, atol=1e-6)
  gray = images(3, size=20, channels=1, seed=4)
  np.testing.assert_array_equal(network.features(gray), network.features(np.tile(gray, 3)))
  assert network.metric_suffix == "" and "standard FID" in network.description
  assert network.id == inception.InceptionGraph(path).id


def test_inception_loader_rejects_files_that_are_not_the_graph(tmp_path):
  junk = tmp_path / "junk.pb"
  junk.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01")
  with pytest.raises(inception.FeatureNetworkError, match="junk.pb: not a frozen Inception graph"):
    inception.InceptionGraph(junk)
  graph = tf.Graph()
  with graph.as_default():
    tf.constant(1.0, name="ExpandDims")
  other = tmp_path / "other.pb"
  other.write_bytes(graph.as_graph_def().SerializeToString())
  with pytest.raises(inception.FeatureNetworkError) as error:
    inception.InceptionGraph(other)
  assert str(error.value) == f"{other}: not a frozen Inception graph (no pool_3 tensor)"
  with pytest.raises(inception.FeatureNetworkError, match="missing.pb: cannot read"):
    inception.InceptionGraph(tmp_path / "missing.pb")


def test_seeded_network_is_deterministic_and_named():
  batch = images(4, size=24, seed=1)
  first, second = inception.SeededRandomCNN(), inception.SeededRandomCNN()
  features = first.features(batch)
  assert features.shape == (4, 512) and np.isfinite(features).all()
  np.testing.assert_array_equal(features, second.features(batch))
  assert not np.allclose(features, inception.SeededRandomCNN(seed=1).features(batch))
  assert first.id != inception.SeededRandomCNN(seed=1).id
  assert first.metric_suffix == "_seeded"
  assert first.description == "seeded-random-cnn (not standard FID)"
  assert isinstance(inception.load_feature_network(None), inception.SeededRandomCNN)


# --- Real-feature cache --------------------------------------------------------------------------


class CountingBatches:
  """Real images in batches of 5, counting how many images were read."""

  def __init__(self, pixels):
    self.pixels, self.read = pixels, 0

  def __iter__(self):
    for start in range(0, len(self.pixels), 5):
      self.read += len(self.pixels[start : start + 5])
      yield self.pixels[start : start + 5]


def test_real_statistics_are_cached_and_recomputed_when_the_key_changes(tmp_path):
  pixels, network = images(20, seed=2), inception.SeededRandomCNN()

  def statistics(dataset, counts, net=network):
    batches = CountingBatches(pixels)
    source = M.batch_images(batches, dataset=dataset, resolution=16)
    return M.real_statistics(source, net, counts, tmp_path), batches.read

  first, read = statistics("pets", [12, None])
  assert read == 20  # one pass serves both counts
  np.testing.assert_allclose(first[12].mu, network.features(pixels[:12]).mean(0), rtol=1e-5)
  assert len(first[None].features) == 20
  assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npz", ".npz"]  # no .tmp left

  again, read = statistics("pets", [None, 12])
  assert read == 0
  for count in (12, None):
    np.testing.assert_array_equal(again[count].sigma, first[count].sigma)
    np.testing.assert_array_equal(again[count].features, first[count].features)

  assert statistics("cats", [12])[1] == 15  # recomputed: the first 12 come in 3 batches of 5
  assert statistics("pets", [12], inception.SeededRandomCNN(seed=1))[1] == 15
  assert statistics("pets", [8])[1] == 10
  assert statistics("pets", [8])[1] == 0


# --- End to end on a tiny demo generator ---------------------------------------------------------


def write_records(directory, pixels):
  writer = multires.MultiResWriter(directory, pixels.shape[1])
  for image in pixels:
    writer.write(lod_pyramid(image))
  writer.close()


@pytest.fixture(scope="module")
def demo_generator():
  config = presets.network_config("demo", 16, channel_base=256, channel_max=32)
  _, _, generator_ema = networks.build_networks(config)
  return generator_ema


def test_metrics_of_a_demo_generator_and_of_the_reals_themselves(tmp_path, demo_generator):
  reals = images(24, seed=3)
  write_records(tmp_path / "stylegan", reals)
  source = M.records_images(tmp_path / "stylegan")
  assert source.resolution == 16
  read = np.concatenate(list(source.batches(10)))
  np.testing.assert_array_equal(read, reals)  # stored order, exact uint8

  network = inception.SeededRandomCNN()
  results = M.compute_metrics(
    ["fid24", "kid16_full"], demo_generator, source, network, tmp_path / "cache", batch_size=8
  )
  assert set(results) == {"fid24_seeded", "kid16_full_seeded", "feature_network"}
  assert results["feature_network"] == "seeded-random-cnn (not standard FID)"
  assert np.isfinite(results["fid24_seeded"]) and results["fid24_seeded"] > 0
  assert np.isfinite(results["kid16_full_seeded"])

  position = [0]

  def replay_reals(batch_size):
    batch = reals[position[0] : position[0] + batch_size]
    position[0] += batch_size
    return batch

  itself = M.compute_metrics(["fid24"], replay_reals, source, network, tmp_path / "cache")
  assert abs(itself["fid24_seeded"]) < 1e-4 * results["fid24_seeded"]

  lines = M.append_metric_lines(tmp_path / "reports", results, "snap-000010", kimg=10.0)
  M.append_metric_lines(tmp_path / "reports", results, "snap-000020", kimg=20.0)
  assert sorted(p.name for p in set(lines)) == [
    "metric-fid24_seeded.jsonl",
    "metric-kid16_full_seeded.jsonl",
  ]
  rows = [json.loads(s) for s in (tmp_path / "reports" / "metric-fid24_seeded.jsonl").open()]
  assert [(r["snapshot"], r["kimg"]) for r in rows] == [
    ("snap-000010", 10.0),
    ("snap-000020", 20.0),
  ]
  assert rows[0]["results"] == {"fid24_seeded": results["fid24_seeded"]}


def test_records_images_reads_any_level_exactly_and_names_a_missing_one(tmp_path):
  reals = images(5, size=32, seed=4)
  write_records(tmp_path / "stylegan", reals)
  top, half = M.records_images(tmp_path / "stylegan"), M.records_images(tmp_path / "stylegan", 16)
  assert (top.resolution, half.resolution) == (32, 16)
  assert top.dataset != half.dataset  # each level has its own cached statistics
  want = np.stack([lod_pyramid(image)[1] for image in reals])
  np.testing.assert_array_equal(np.concatenate(list(half.batches(2))), want.transpose(0, 2, 3, 1))
  with pytest.raises(ValueError, match="no 64 px level"):
    M.records_images(tmp_path / "stylegan", 64)


def test_generator_sampler_draws_latents_and_labels_from_the_seed():
  config = presets.network_config(
    "demo", 8, c_dim=3, channel_base=64, channel_max=16, num_fp16_res=2, use_noise=False
  )
  generator = networks.Generator(config)
  batch = M.generator_sampler(generator, seed=1)(5)
  assert batch.shape == (5, 8, 8, 3) and batch.dtype == np.uint8 and batch.std() > 0
  rng = np.random.RandomState(1)
  z = rng.standard_normal([5, config.z_dim]).astype(np.float32)
  labels = np.eye(3, dtype=np.float32)[rng.randint(3, size=5)]
  want = generator((z, labels), force_fp32=True).numpy().astype(np.float64)
  want = np.clip(np.floor(want * 127.5 + 128.0), 0, 255)
  assert np.abs(batch - want).max() <= 1  # float32 graph vs eager rounding at most


def test_metrics_stage_writes_the_report_and_reports_bad_names_in_one_line(
  tmp_path, demo_generator
):
  # 32 px records: the 16 px generator is scored against their 16 px level.
  write_records(tmp_path / "data" / "records" / "stylegan", images(12, size=32, seed=6))
  snapshot = tmp_path / "snapshot"
  networks.save_networks(snapshot, demo_generator.config, {"G_ema": demo_generator}, {"kimg": 4})
  common = [
    f"--records={tmp_path / 'data'}",
    f"--network={snapshot}",
    f"--metrics_cache={tmp_path / 'cache'}",
    "--batch_size=6",
  ]
  workdir = tmp_path / "run"
  result = launch("--stage=metrics", f"--workdir={workdir}", "--metrics_names=fid12,kid6", *common)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "reports" / "metrics.json").read_text())
  assert report["kimg"] == 4 and report["feature_network"].startswith("seeded-random-cnn")
  assert np.isfinite(report["fid12_seeded"]) and np.isfinite(report["kid6_seeded"])
  assert json.loads(result.stdout)["fid12_seeded"] == report["fid12_seeded"]
  line = json.loads((workdir / "reports" / "metric-kid6_seeded.jsonl").read_text())
  assert line["kimg"] == 4 and line["snapshot"] == str(snapshot)

  bad = launch("--stage=metrics", f"--workdir={workdir}", "--metrics_names=fid12,fjd", *common)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith("tfpets: error: --metrics_names: unknown metric 'fjd'")
