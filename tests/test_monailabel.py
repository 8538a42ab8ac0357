"""MONAI Label serving the bundle (apps/monailabel): a real server on 127.0.0.1, queried over HTTP.

The server runs the tiny network of ``TINY`` with fresh weights and is checked against the bundle's
own inference (configs/inference.json) on the same cases.

Needs MONAI Label in the test's Python (``bash apps/monailabel/install.sh``). Without it these tests
skip, except under CI (``CI=true``), where they fail instead. Where torchvision cannot be imported
(no build of it loads with the installed torch, as with this CPU torch), the server gets
``tests/stand_ins`` on its PYTHONPATH: a minimal torchvision whose ``make_grid`` and ``save_image``,
imported by ``monailabel.transform.post`` and never called on the classification path, raise if called.
"""

from __future__ import annotations

import email
import email.policy
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from scripts.calibration import Calibration
from scripts.stack_4d import main as stack

ROOT = Path(__file__).resolve().parents[1]
TINY = {"device": "cpu", "encoder_layers": [1, 1], "encoder_width": 4, "prototypes_per_scale": [2, 2, 1],
        "embed_dim": 8, "mapping_dim": 8, "roi_size": [48, 48, 48], "target_spacing": 2.0}
"""Network and geometry overrides of configs/inference.json, for the server (extra_config) and the reference."""
CASES = ("BraTS20_Training_001", "BraTS20_Training_002")
PRUNED = [0, 3]
"""Columns the served weights have pruned (s1_k0, s2_k1)."""
HOST = "127.0.0.1"
START_TIMEOUT = 300.0  # generous: on a loaded shared machine the start alone took over 90 s


def _monailabel() -> Path:
    """The ``monailabel`` launcher beside this Python; skip (fail under CI) without MONAI Label."""
    launcher = Path(sys.executable).parent / "monailabel"
    if importlib.util.find_spec("monailabel") is None or not launcher.is_file():
        reason = f"MONAI Label is not installed for {sys.executable} (bash apps/monailabel/install.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return launcher


def _server_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "MONAILABEL_PYEXE": sys.executable, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    probe = subprocess.run([sys.executable, "-c", "import torchvision.utils"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests" / "stand_ins"), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _start(tmp: Path, studies: Path, weights: Path, extra: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start ``monailabel start_server`` in its own process group; returns it, its URL and its log file."""
    port = _free_port()
    command = [str(_monailabel()), "start_server", "--app", str(ROOT / "apps" / "monailabel"), "--studies",
               str(studies), "--conf", "model_path", str(weights), "--conf", "extra_config", str(extra),
               "--host", HOST, "--port", str(port)]
    log = tmp / f"server_{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=_server_env(tmp), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, f"http://{HOST}:{port}", log


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _request(url: str, form: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, str, bytes]:
    """GET, or POST ``form`` url-encoded; returns the status, content type and body (of errors too)."""
    data = None if form is None else urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def _infer(server: SimpleNamespace, study: str, output: str | None = "json", **params) -> tuple[int, str, bytes]:
    query = urllib.parse.urlencode({"image": study, **({"output": output} if output else {})})
    return _request(f"{server.url}/infer/glioma_grading?{query}", {"params": json.dumps(params)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_synthetic_root: Path) -> Iterator[SimpleNamespace]:
    """Two stacked synthetic studies plus four bad ones, fresh tiny weights, the bundle's own answers, and a
    running server (stopped, with its process group, after the module)."""
    _monailabel()
    tmp = tmp_path_factory.mktemp("monailabel")
    studies, extra, weights = tmp / "studies", tmp / "tiny.json", tmp / "model.pt"
    for case in CASES:
        stack(str(data_synthetic_root / case), str(studies))
    image = nib.load(str(studies / f"{CASES[0]}.nii.gz"))
    voxels = np.asarray(image.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(voxels[..., 0], image.affine), str(studies / "single_sequence.nii.gz"))
    nib.save(nib.Nifti1Image(voxels[..., :3], image.affine), str(studies / "three_sequences.nii.gz"))
    whole = (studies / f"{CASES[0]}.nii.gz").read_bytes()
    (studies / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    voxels[10, 10, 10, 3] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), str(studies / "with_nan.nii.gz"))
    extra.write_text(json.dumps(TINY))
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "inference.json"), str(extra)])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    network.classifier.prune(PRUNED)  # a pruned model is served from its weights alone
    torch.save(network.state_dict(), weights)
    Calibration(temperature=3.0, method="platt_targets", cases=12, separated=True).save(tmp)  # beside the weights
    reference, single = {}, {}
    for case in CASES:
        for answers, folder, flip_average in ((reference, "reference", True), (single, "single", False)):
            run(config_file=[str(ROOT / "configs" / "inference.json"), str(extra)], logging_file=False,
                bundle_root=str(ROOT), input_dir=str(data_synthetic_root / case), output_dir=str(tmp / folder),
                ckpt_path=str(weights), write_report=False, flip_average=flip_average)
            answers[case] = json.loads((tmp / folder / case / "prediction.json").read_text())
    process, url, log = _start(tmp, studies, weights, extra)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"server exited ({process.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no /info in {START_TIMEOUT} s:\n{log.read_text()[-4000:]}"
            try:
                if _request(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield SimpleNamespace(url=url, studies=studies, tmp=tmp, extra=extra, reference=reference, single=single,
                              process=process)
    finally:
        _stop(process)


def test_info_lists_the_model_with_the_metadata_labels(server):
    status, _, body = _request(f"{server.url}/info/")
    assert status == 200
    model = json.loads(body)["models"]["glioma_grading"]
    assert model["labels"] == {"lgg": 0, "hgg": 1} and model["type"] == "classification"


@pytest.mark.parametrize("case", CASES)
def test_json_scores_are_the_bundles_own_inference_with_its_evidence_record(server, case):
    status, _, body = _infer(server, case)
    assert status == 200, body
    answer, reference = json.loads(body), server.reference[case]
    assert [(p["idx"], p["label"]) for p in answer["prediction"]] == [(0, "lgg"), (1, "hgg")]
    assert not {p["column"] for p in answer["evidence"]["prototypes"]} & set(PRUNED)
    scores = [p["score"] for p in answer["prediction"]]
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    expected = [reference["probabilities"][name] for name in reference["class_names"]]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert answer["evidence"]["flip_average"] is True and reference["flip_average"] is True  # the bundle's default
    # the single pass of the same weights (--flip_average false) is softmax(logits / T): calibrated
    single = server.single[case]
    logits = torch.tensor([single["logits"][name] for name in single["class_names"]])
    calibrated = [single["probabilities"][name] for name in single["class_names"]]
    np.testing.assert_allclose(calibrated, torch.softmax(logits / 3.0, 0).tolist(), rtol=0, atol=1e-5)
    assert single["logits"] == pytest.approx(reference["logits"], abs=1e-6) and single["flip_average"] is False
    assert answer["evidence"]["calibration"] == reference["calibration"] and reference["calibration"]["cases"] == 12
    evidence = answer["evidence"]
    assert evidence["files"] == {"image": str((server.studies / f"{case}.nii.gz").resolve())}
    assert evidence["predicted_class"] == reference["predicted_class"]
    assert [p["column"] for p in evidence["prototypes"]] == [p["column"] for p in reference["prototypes"]]
    for served, own in zip(evidence["prototypes"], reference["prototypes"]):
        assert served["similarity"] == pytest.approx(own["similarity"], abs=1e-5)
        assert served.get("map_file") == own.get("map_file")
    assert evidence["evidence_maps"] == reference["evidence_maps"]


def test_image_and_default_outputs_carry_the_evidence_map_on_the_study_grid(server, tmp_path):
    case = CASES[0]
    reference = server.reference[case]
    own = nib.load(str(server.tmp / "reference" / case / reference["evidence_maps"]["class"]))
    study = nib.load(str(server.studies / f"{case}.nii.gz"))
    status, _, body = _infer(server, case, output="image")
    assert status == 200
    (tmp_path / "image.nii.gz").write_bytes(body)
    status, content_type, multipart = _infer(server, case, output=None)
    assert status == 200 and content_type.startswith("multipart/form-data")
    parts = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + multipart,
                                     policy=email.policy.HTTP)
    fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
              for part in parts.iter_parts()}
    assert json.loads(fields["params"])["prediction"][1]["label"] == "hgg"
    (tmp_path / "multipart.nii.gz").write_bytes(fields["image"])
    for name in ("image.nii.gz", "multipart.nii.gz"):
        served = nib.load(str(tmp_path / name))
        assert served.shape == study.shape[:3]
        np.testing.assert_allclose(served.affine, study.affine, atol=1e-6)
        np.testing.assert_allclose(served.get_fdata(), own.get_fdata(), rtol=0, atol=1e-5)


def test_evidence_is_turned_off_per_request(server):
    status, content_type, body = _infer(server, CASES[1], output=None, evidence=False)
    assert status == 200 and content_type.startswith("application/json")
    answer = json.loads(body)
    assert "evidence" not in answer and len(answer["prediction"]) == 2


@pytest.mark.parametrize(
    ("study", "status", "problem"),
    [
        ("not_a_study", 404, "not in the datastore"),
        ("single_sequence", 422, "got a 3D image"),
        ("three_sequences", 422, "got 3"),
        ("with_nan", 422, "non-finite voxels (NaN or inf) in ['FLAIR']"),
        ("truncated", 422, "cannot read"),
    ],
)
def test_a_bad_study_answers_an_error_naming_it_and_the_server_goes_on(server, study, status, problem):
    code, _, body = _infer(server, study)
    assert code == status, body
    detail = json.loads(body)["detail"]
    assert detail.startswith(f"study {study!r}: ") and problem in detail, detail
    code, _, body = _infer(server, CASES[0], evidence=False)
    assert code == 200 and json.loads(body)["prediction"][0]["label"] == "lgg"


def _group_memory_mib(group: int) -> tuple[float, float]:
    """Resident and peak resident memory (VmRSS, VmHWM) summed over the processes of process group ``group``."""
    rss = peak = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            status = dict(line.split(":", 1) for line in (stat.parent / "status").read_text().splitlines())
        except (OSError, ValueError, IndexError):
            continue
        rss += int(status.get("VmRSS", "0 kB").split()[0]) / 1024
        peak += int(status.get("VmHWM", "0 kB").split()[0]) / 1024
    return rss, peak


def test_concurrent_clients_get_the_bundles_scores_and_a_malformed_request_its_4xx(server):
    """4 clients x 5 /infer requests at once (every other one with evidence); the 3rd of client 2 is malformed
    (``output=jsn``, which FastAPI rejects; a ``params`` that is not JSON gets MONAI Label's own HTTP 500).
    Prints the server's memory after the run."""
    from concurrent.futures import ThreadPoolExecutor

    def client(index: int) -> list[tuple[str, int, bytes]]:
        answers = []
        for n in range(5):
            case = CASES[(index + n) % len(CASES)]
            if (index, n) == (1, 2):
                query = urllib.parse.urlencode({"image": case, "output": "jsn"})
                status, _, body = _request(f"{server.url}/infer/glioma_grading?{query}", {"params": "{}"}, timeout=300)
                answers.append(("malformed", status, body))
            else:
                status, _, body = _infer(server, case, **({} if n % 2 == 0 else {"evidence": False}))
                answers.append((case, status, body))
        return answers

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = [a for batch in pool.map(client, range(4)) for a in batch]
    seconds = time.monotonic() - started
    malformed = [(status, body) for case, status, body in answers if case == "malformed"]
    assert len(malformed) == 1 and 400 <= malformed[0][0] < 500, malformed
    good = [(case, status, body) for case, status, body in answers if case != "malformed"]
    assert len(good) == 19
    for case, status, body in good:
        assert status == 200, (case, status, body[:500])
        reference = server.reference[case]
        scores = [p["score"] for p in json.loads(body)["prediction"]]
        np.testing.assert_allclose(scores, [reference["probabilities"][n] for n in reference["class_names"]],
                                   rtol=0, atol=1e-5)
    assert server.process.poll() is None
    rss, peak = _group_memory_mib(server.process.pid)
    assert rss > 0
    print(f"\n20 requests from 4 clients in {seconds:.1f} s; malformed: HTTP {malformed[0][0]}; "
          f"server memory after the run: {rss:.0f} MiB resident (peak {peak:.0f} MiB)")


SERVED_PRECISION = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/apps/monailabel"]
from lib.infers import GliomaGradingInfer
task = GliomaGradingInfer(sys.argv[1], sys.argv[2], sys.argv[3])
print(task._get_network("cpu", {}).precision)
"""
"""Builds the app's infer task as the server does and prints the precision of the network it serves."""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_served_network_runs_at_the_bundles_precision(server, tmp_path, precision):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**TINY, "precision": precision}))
    done = subprocess.run([sys.executable, "-c", SERVED_PRECISION, str(ROOT), str(server.tmp / "model.pt"), str(extra)],
                          cwd=ROOT, env=_server_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == precision


@pytest.mark.parametrize("weights", ["missing.pt", "unreadable.pt"])
def test_missing_or_unreadable_weights_stop_the_server_at_start(server, tmp_path, weights):
    path = tmp_path / weights
    if weights == "unreadable.pt":
        path.write_bytes(b"not a checkpoint")
    process, _, log = _start(tmp_path, server.studies, path, server.extra)
    try:
        process.wait(timeout=START_TIMEOUT)
    finally:
        _stop(process)
    text = log.read_text()
    assert process.returncode != 0
    expected = f"no weights at {path}" if weights == "missing.pt" else f"cannot load weights {path}"
    assert f"glioma_grading: {expected}" in text, text[-4000:]


def test_metadata_names_the_monailabel_version_that_install_sh_installs():
    install = (ROOT / "apps" / "monailabel" / "install.sh").read_text()
    pinned = re.search(r"--no-deps .*monailabel==([\w.]+)", install).group(1)
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert metadata["supported_apps"]["monai-label"] == pinned
    if importlib.util.find_spec("monailabel") is not None:
        assert importlib.metadata.version("monailabel") == pinned
