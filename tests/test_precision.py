"""warpgrad_tf.precision: a bfloat16 policy is kept only where the hardware computes in bfloat16 (flag sets and
devices injected, never the host's CPU)."""

import pytest

from warpgrad_tf import precision

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize("flags", [AVX2_ONLY | {"avx512f", "avx512_bf16"}, AVX2_ONLY | {"amx_bf16", "amx_tile"},
                                   {"fp", "asimd", "bf16"}])
def test_bfloat16_is_kept_on_cpus_with_bf16_instructions(flags):
    assert precision.supported_dtype("mixed_bfloat16", flags=flags, accelerators=[]) == ("mixed_bfloat16", None)


def test_bfloat16_falls_back_to_float32_with_a_reason_on_an_avx2_cpu():
    dtype, note = precision.supported_dtype("mixed_bfloat16", flags=AVX2_ONLY | {"avx512f"}, accelerators=[])
    assert dtype == "float32"
    assert "mixed_bfloat16" in note and "no bf16 instructions" in note and "\n" not in note


def test_an_accelerator_keeps_bfloat16_and_unreadable_flags_fall_back(monkeypatch):
    assert precision.supported_dtype("bfloat16", flags=AVX2_ONLY, accelerators=["GPU"]) == ("bfloat16", None)
    assert precision.bfloat16_support(flags=AVX2_ONLY, accelerators=["TPU"])[0]
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # no /proc/cpuinfo
    dtype, note = precision.supported_dtype("mixed_bfloat16", accelerators=[])
    assert dtype == "float32" and "cannot be read" in note


def test_other_policies_are_unchanged():
    for dtype in (None, "float32", "mixed_float16", "float64"):
        assert precision.supported_dtype(dtype, flags=AVX2_ONLY, accelerators=[]) == (dtype, None)


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert precision.cpu_flags(str(x86)) == {"fpu", "sse", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


def test_trainer_runs_the_bf16_budget_in_float32_on_an_avx2_cpu_and_says_why(tmp_path, omniglot_dir, omniglot_cache,
                                                                             monkeypatch, capsys):
    import os

    import keras

    from tests.conftest import REPO
    from tests.test_omniglot_trainer import run

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX2_ONLY))
    monkeypatch.setattr(precision, "visible_accelerators", lambda: [])
    gin_file = os.path.join(REPO, "configs/omniglot/warp_leap.gin")
    with open(os.path.join(REPO, "configs/omniglot/budgets/bf16.gin")) as f:
        bf16 = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
    run(tmp_path, omniglot_dir, omniglot_cache, gin_file, bf16)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "falls back to float32" in ln]
    assert len(lines) == 1 and "no bf16 instructions" in lines[0]
    model = keras.saving.load_model(str(tmp_path / "model" / "model.keras"))
    assert model.get_layer("conv1").compute_dtype == "float32"
