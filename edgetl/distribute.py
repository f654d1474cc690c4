"""Where edgetl runs: one place that reads the cluster setting and picks the engine.

One setting, `--cluster` or $EDGETL_CLUSTER, points edgetl at a cluster; unset, everything runs
in this one process (the default). Training (stage 2, --augment, --full-forward) goes through
tf.distribute:
  * `TF_CONFIG` set (a cluster of several workers)  -> MultiWorkerMirroredStrategy
  * several GPUs visible                             -> MirroredStrategy
  * otherwise                                        -> TensorFlow's default strategy
Embedding extraction over a folder shards across Ray workers when the setting is `ray`
(a local Ray, or the cluster named by $RAY_ADDRESS) or `ray://HOST:PORT` (edgetl.cluster).
"""

from __future__ import annotations

import json
import os

from edgetl.errors import UserError

CLUSTER_ENV = "EDGETL_CLUSTER"


def cluster_setting(flag: str | None = None) -> str:
    """The flag if given, else $EDGETL_CLUSTER; '' means one plain process."""
    setting = (flag if flag is not None else os.environ.get(CLUSTER_ENV, "")).strip()
    if setting not in ("", "ray") and not setting.startswith("ray://"):
        raise UserError(
            f"cluster setting {setting!r} (--cluster or ${CLUSTER_ENV}) is not one of: '' (one "
            "process), 'ray' (local Ray, or $RAY_ADDRESS), 'ray://HOST:PORT'; multi-worker "
            "training is set by TF_CONFIG"
        )
    return setting


def ray_address(setting: str) -> str | None:
    """The address for ray.init, or None when the setting does not ask for Ray.
    'ray' alone: $RAY_ADDRESS when set (a running cluster), else a local Ray ('local')."""
    if setting == "ray":
        return os.environ.get("RAY_ADDRESS") or "local"
    if setting.startswith("ray://"):
        return setting
    return None


def tf_config_workers() -> int:
    """Number of workers (chief included) in $TF_CONFIG; 0 when it is unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
        return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))
    except (ValueError, AttributeError, TypeError) as e:
        raise UserError(
            f"$TF_CONFIG is not a TensorFlow cluster description ({e}); expected JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
            '"index": 0}}'
        ) from None


def choose_strategy():
    """The tf.distribute strategy for this process (see the module docstring). Must run before
    TensorFlow executes anything: MultiWorkerMirroredStrategy configures collectives at start."""
    import tensorflow as tf

    if tf_config_workers() > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True on the worker whose results count (worker 0, or the only process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def describe(strategy) -> str:
    n = strategy.num_replicas_in_sync
    name = type(strategy).__name__
    # tf.distribute.MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    name = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(name, name)
    return "one process" if n == 1 and name.startswith("_Default") else f"{name}, {n} replicas"
