"""The machine record that training times and benchmark figures are stored with (mimic_utils.machine)."""

from __future__ import annotations

from mimic_utils import machine


def test_cpu_model_reads_the_kernels_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n")
    assert machine.cpu_model(info) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\n")
    assert machine.cpu_model(info) is None
    assert machine.cpu_model(tmp_path / "missing") is None


def test_matmul_speed_is_the_flops_of_the_products_timed_over_the_time_taken(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(ticks)))
    # start at 0, one product (elapsed 1 < 2 s), then elapsed 2: one product in 2 s
    assert machine.matmul_speed(seconds=2.0, shape=(1000, 100, 500)) == round(2 * 1000 * 100 * 500 / 2 / 1e9, 2)
    assert machine.matmul_speed(seconds=0.0, shape=(1000, 100, 500)) > 0  # at least one product, even at 0 s


def test_the_record_names_the_machine_and_its_speed():
    record = machine.machine_record(seconds=0.05)
    assert record["cpu_count"] and record["torch"] and record["matmul_gflops"] > 0
    line = machine.speed_line({"cpu_model": "AMD EPYC", "cpu_count": 2, "matmul_gflops": 41.31})
    assert line == "AMD EPYC, 2 cores, matmul 41.3 GFLOP/s"
    assert machine.speed_line(None) == "2 cores" and machine.speed_line({}) == "2 cores"
    assert machine.speed_line({"processor": "x86_64", "cpu_count": 2}) == "x86_64, 2 cores"
