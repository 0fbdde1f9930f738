"""A store on object storage: ingest writes it to s3://, --verify reads it back, training streams
it (reader threads fetch whole chunks through zarr's fsspec store) and encode reads it, against a
real S3-compatible server (moto's server mode) on loopback only. Training from it gives the
losses training from the same data on local disk gives."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
TINY = ["--batch-size", "48", "--hidden", "64,32", "--latent", "8", "--metrics-port", "0", "--deterministic"]


@pytest.fixture(scope="module")
def s3(train_store, tmp_path_factory):
    """(environment naming the server, the s3:// store ingested from the train store's source)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}).mkdir("kmervae")
    store, labels = train_store
    source = labels.parent / "all_kmers.npy"
    ingested = run("ingest", source, "s3://kmervae/kmers.zarr", "--chunk-rows", 40, env=env)
    yield env, "s3://kmervae/kmers.zarr", ingested
    server.stop()


def test_ingest_writes_a_store_to_object_storage_that_verifies(s3):
    env, url, ingested = s3
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    verified = run("ingest", "--verify", url, env=env)
    assert verified.returncode == 0, verified.stderr[-2000:]


def test_training_from_object_storage_gives_the_local_stores_losses_and_encodes(s3, train_store, tmp_path):
    env, url, _ = s3
    local, _ = train_store
    for name, data in (("s3", url), ("local", local)):
        run("train", "--data", data, "--out", tmp_path / name, "--epochs", 2, "--workers", 2, *TINY, env=env, check=True)
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("s3", "local")]
    for a, b in zip(*histories, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    run("train.encode", "--checkpoint", tmp_path / "s3" / "vae_multi_encoder_final.pt", "--data", url,
        "--out", tmp_path / "latents.zarr", env=env, check=True)
    assert (tmp_path / "latents.zarr").exists()
