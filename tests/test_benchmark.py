"""The benchmark code runs and reports ratios (tiny sizes; the numbers come from
`launch/benchmark.py`, not from tests)."""

from medvlmoe_jax.benchmark import moe


def test_moe_benchmark_reports_ratios():
  res = moe.run(batch=8, dim=16, hidden=32, tokens_per_example=4, rounds=1)
  cases = res["cases"]
  assert {(c["granularity"], c["mode"]) for c in cases} == {
      (g, m) for g in ("sample", "token") for m in ("forward", "train")}
  for c in cases:
    assert c["dense_ms"] > 0 and c["moe_dropless_over_dense"] > 0
  assert "granularity" in moe.table(res)
