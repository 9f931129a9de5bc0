"""Preprocessing on other machines: TensorFlow's tf.data service, a dispatcher and its workers.

    python -m datasets.service dispatcher --port 5050 [--work_dir DIR]
    python -m datasets.service worker --dispatcher HOST:5050 --port 5051 [--host NAME]
    python main.py ... --hparams="data.service_address='grpc://HOST:5050'"

The trainer builds each epoch's training pipeline as usual (reading, decode, crop, RandAugment,
batching, mixup) and hands the whole graph to the dispatcher as a job (`distribute`); the workers run
it, reading the data files themselves (so they need the same paths: a shared or cloud file system),
and stream finished batches back.  Evaluation stays on the trainer.

Processing mode: `ShardingPolicy.DYNAMIC`.  The dispatcher hands out the pipeline's source splits
(TFRecord shards; for in-memory sources single examples) first come, first served, so each example
is made once per epoch however many workers there are, a slow worker takes less, and workers may
join or leave mid-job; a worker that dies loses the splits it was working on (at-most-once).  OFF
would make every worker produce the whole epoch (N workers: each example N times); the static
policies (FILE, DATA) need a fixed list of workers and a worker local to each trainer.  What this
costs in determinism is written in the README ("tf.data service").

Each call of `distribute` is a new job with a unique name (stage, epoch, input pipeline and a random
attempt tag), so the workers switch with every progressive stage and a restarted trainer never joins
its predecessor's half-read job.
"""

import re
import socket
import sys
import uuid
from typing import Optional, Tuple

from absl import logging
import tensorflow as tf

__all__ = ["ServiceUnavailable", "parse_address", "check_reachable", "job_name", "distribute",
           "start_dispatcher", "start_worker"]

_ADDRESS = re.compile(r"grpc://(?P<host>[^:/\s]+):(?P<port>\d{1,5})")
CONNECT_TIMEOUT_S = 5.0


class ServiceUnavailable(ConnectionError):
    """The tf.data service dispatcher cannot be reached."""


def parse_address(address: str) -> Tuple[str, int]:
    """"grpc://HOST:PORT" -> (HOST, PORT); ValueError for anything else."""
    match = _ADDRESS.fullmatch(address or "")
    if match is None:
        raise ValueError(f"tf.data service address {address!r} must look like grpc://HOST:PORT")
    return match["host"], int(match["port"])


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raises ServiceUnavailable unless a TCP connection to the dispatcher opens within timeout_s
    (nothing to check for an empty address: no service).

    TensorFlow itself retries an unreachable dispatcher for many minutes before it fails; this
    check turns a wrong address or a dispatcher that is not running into an error within seconds.
    """
    if not address:
        return
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ServiceUnavailable(
            f"tf.data service dispatcher {address} is unreachable ({e.strerror or e}); start one with "
            f"`python -m datasets.service dispatcher --port {port}` on {host}, or fix or empty "
            "data.service_address") from None


def job_name(stage: int, epoch: int, input_pipeline: int = 0) -> str:
    """A job name no other call returns: the workers start every stage and epoch afresh."""
    return f"efficientnetv2-stage{stage}-epoch{epoch}-pipeline{input_pipeline}-{uuid.uuid4().hex[:12]}"


def distribute(dataset: tf.data.Dataset, address: str, name: str) -> tf.data.Dataset:
    """`dataset` made by the service's workers as job `name` (DYNAMIC sharding); `dataset` itself
    when `address` is empty (no service)."""
    if not address:
        return dataset
    check_reachable(address)
    logging.info("Training data from tf.data service %s, job %s (DYNAMIC sharding).", address, name)
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=address,
        job_name=name))


def start_dispatcher(port: int = 0, work_dir: Optional[str] = None,
                     **config) -> tf.data.experimental.service.DispatchServer:
    """A started dispatcher on `port` (0: any free port); with `work_dir`, fault tolerant: its
    journal there lets a restarted dispatcher recover its jobs.  `config`: more DispatcherConfig
    fields (timeouts)."""
    return tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir), **config))


def start_worker(dispatcher: str, port: int = 0, host: str = "localhost",
                 **config) -> tf.data.experimental.service.WorkerServer:
    """A started worker registered with `dispatcher` ("HOST:PORT" or "grpc://HOST:PORT"), telling
    clients to reach it at `host`:port.  `config`: more WorkerConfig fields (heartbeat interval)."""
    dispatcher = dispatcher.removeprefix("grpc://")
    return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher, worker_address=f"{host}:%port%", port=port, **config))


def _define_flags():
    from absl import flags  # noqa: PLC0415 -- only the command line has flags

    flags.DEFINE_integer("port", 0, "port to listen on (0: any free port)")
    flags.DEFINE_string("work_dir", None, "dispatcher: journal folder; makes it fault tolerant")
    flags.DEFINE_string("dispatcher", None, "worker: the dispatcher's HOST:PORT")
    flags.DEFINE_string("host", socket.gethostname(), "worker: the name trainers reach this machine by")
    return flags.FLAGS


def _bound_port(server) -> int:
    # The port a server on port 0 took: TensorFlow has no public accessor (its tests use _address).
    return int(server._address.rsplit(":", 1)[1])


def _serve(argv, flags_):
    commands = ("dispatcher", "worker")
    if len(argv) != 2 or argv[1] not in commands:
        raise SystemExit(f"usage: python -m datasets.service {{{'|'.join(commands)}}} --port P "
                         "[--work_dir DIR | --dispatcher HOST:P --host NAME]")
    if argv[1] == "dispatcher":
        server = start_dispatcher(flags_.port, flags_.work_dir)
        where = f"grpc://{socket.gethostname()}:{_bound_port(server)}"
        logging.info("tf.data service dispatcher listening on %s (%s); trainers: "
                     "--hparams=\"data.service_address='%s'\"", where,
                     f"fault tolerant, journal in {flags_.work_dir}" if flags_.work_dir
                     else "not fault tolerant: no --work_dir", where)
    else:
        if not flags_.dispatcher:
            raise SystemExit("worker: --dispatcher HOST:PORT is required")
        try:
            check_reachable("grpc://" + flags_.dispatcher.removeprefix("grpc://"))
        except ServiceUnavailable as e:
            raise SystemExit(f"worker: {e}") from None
        server = start_worker(flags_.dispatcher, flags_.port, flags_.host)
        logging.info("tf.data service worker listening on %s:%d, registered with dispatcher %s",
                     flags_.host, _bound_port(server), flags_.dispatcher)
    server.join()  # Until killed.


def main():
    from absl import app  # noqa: PLC0415

    flags_ = _define_flags()
    app.run(lambda argv: _serve(argv, flags_), argv=sys.argv)


if __name__ == "__main__":
    main()
