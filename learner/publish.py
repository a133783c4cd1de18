"""Publishing policy versions: the checkpoint store (weights) and the policy topic (version records).

A published version is a plain Hugging Face directory (``config.json``, ``generation_config.json``,
``model.safetensors``, tokenizer files; no value head) that vLLM and transformers load as is, under
``<store>/v<N>/``, plus a :class:`proto.events_pb2.PolicyVersion` record keyed by ``N`` on the compacted
policy topic. The contract with serving lives in ``proto/``: ``proto.policy_store`` (URI resolution and
``weights_sha256``: the sha256 of the directory's ``*.safetensors`` files in name order) and
``proto.policy_log`` (how the topic's records fold into versions, pin and next number).

Stores are chosen by URI scheme through :data:`STORES`; only ``file://`` (a directory on a shared disk) is
implemented. Object storage (``s3://``, ``gs://``) plugs in as another :class:`PolicyStore` that stages
locally, uploads, and downloads in ``local_dir``.

Numbering (``PolicyLog.next_version``): the bundled SFT model is version 0; a new version is the highest
number on the topic plus one.
Publishing is idempotent by content: if a record with the same weights' sha256 is already on the topic
(a restart repeating a publish its crash interrupted), that record is returned instead of a new one.
"""

import logging
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from kafka import KafkaProducer
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from proto import policy_store, topics, wire
from proto.checkpoint import commit_dir
from proto.events_pb2 import PolicyVersion
from proto.kafka import call_with_retry, idempotent_producer, read_policy
from proto.policy_log import PolicyLog
from proto.settings import KafkaSettings

_log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StagedPolicy:
    """A policy saved to the store's staging area, not yet visible as a version."""

    path: Path
    sha256: str


class PolicyStore(Protocol):
    """Where published policy weights live, addressed by URI."""

    def stage(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> StagedPolicy:
        """Save ``lm`` and ``tokenizer`` as a loadable HF directory and hash its weights."""

    def commit(self, staged: StagedPolicy, version: int) -> str:
        """Make ``staged`` version ``version``; return its checkpoint URI."""

    def discard(self, staged: StagedPolicy) -> None:
        """Drop a staged policy that will not be published."""

    def local_dir(self, uri: str) -> Path:
        """A local directory holding the policy at ``uri``, for loading."""


class LocalPolicyStore:
    """A directory store (``file://``): versions are ``<root>/v<N>/``, staged under ``<root>/.staging-*``."""

    def __init__(self, root: Path):
        self.root = root

    def stage(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> StagedPolicy:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".staging-{uuid.uuid4().hex}"
        lm.save_pretrained(path)  # safetensors, config.json, generation_config.json
        tokenizer.save_pretrained(path)
        return StagedPolicy(path, policy_store.weights_sha256(path))

    def commit(self, staged: StagedPolicy, version: int) -> str:
        final = self.root / f"v{version}"
        if final.exists():
            # A crash after the rename but before the record reached the topic: the same weights are there.
            if policy_store.weights_sha256(final) != staged.sha256:
                raise FileExistsError(f"{final} exists with other weights than the ones being published")
            self.discard(staged)
            return final.resolve().as_uri()
        for f in staged.path.iterdir():
            f.chmod(0o644)  # save_pretrained writes 0600; serving may run as another user of the store
        # rename is atomic: a reader (serving) never sees a half-written version directory
        commit_dir(staged.path, final)
        return final.resolve().as_uri()

    def discard(self, staged: StagedPolicy) -> None:
        shutil.rmtree(staged.path, ignore_errors=True)

    def local_dir(self, uri: str) -> Path:
        return policy_store.local_dir(uri)


STORES = {"file": lambda uri: LocalPolicyStore(policy_store.local_dir(uri))}


def open_store(uri: str) -> PolicyStore:
    """The store for ``uri`` by scheme. Raises ``ValueError`` for a scheme with no store in :data:`STORES`."""
    scheme = urlparse(uri).scheme
    if scheme not in STORES:
        raise ValueError(f"no policy store for scheme {scheme!r} in {uri!r} (have: {sorted(STORES)})")
    return STORES[scheme](uri)


class PolicyTopic:
    """Reads and appends version records on the compacted policy topic (``proto.kafka``: its whole-topic
    read and idempotent producer, acks=all).

    Reads and appends are retried with backoff while the broker is unreachable (the shared retry policy),
    until they succeed or ``stop`` is set (then the last error is raised). A retried append may write its
    record twice; both are the same record under the same key, which the topic's fold (PolicyLog) counts
    once.
    """

    def __init__(self, settings: KafkaSettings, stop: threading.Event | None = None):
        self.settings = settings
        self.topic = settings.topic(topics.POLICY)
        self._stop = stop
        self._producer: KafkaProducer | None = None

    def read(self, timeout_s: float = 30.0) -> PolicyLog:
        """The topic folded from its beginning to its current end (every version's latest record, the pin).

        Each try that does not reach the end within ``timeout_s`` (``TimeoutError``) is retried too.
        """
        return read_policy(self.settings, "rlhf-learner-policy", self._stop, timeout_s)

    def publish(self, record: PolicyVersion, timeout_s: float = 30.0) -> None:
        """Append ``record`` keyed by its version; returns once the broker acknowledged it (acks=all).
        Each try waits up to ``timeout_s`` for the acknowledgement."""
        call_with_retry(self._publish, record, timeout_s, log=_log, what="publishing a policy record",
                        stop=self._stop)

    def _publish(self, record: PolicyVersion, timeout_s: float) -> None:
        if self._producer is None:
            self._producer = idempotent_producer(self.settings, "rlhf-learner-policy")
        try:
            self._producer.send(self.topic, key=wire.key_of(record), value=wire.encode(record)).get(
                timeout=timeout_s
            )
        except BaseException:
            # A producer that timed out may hold a stale idempotence state: the next try starts afresh.
            self._producer.close(timeout=0)
            self._producer = None
            raise

    def close(self) -> None:
        """Close the producer; what it still holds is given ``CLOSE_TIMEOUT_S`` (a broker outage does not
        hold the exit: every record it was given was acknowledged or is retried by the caller)."""
        if self._producer is not None:
            self._producer.close(timeout=CLOSE_TIMEOUT_S)
