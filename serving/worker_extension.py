"""Methods that run inside vLLM's worker process (passed as ``worker_extension_cls``).

vLLM mixes this class into its worker, so ``self`` is the worker and ``self.model_runner`` its runner;
the engine calls these methods through ``collective_rpc``. Arguments cross a process boundary, so pass
paths, never tensors.
"""


class PolicySwapExtension:
    """In-place policy weight reload for a running engine."""

    def load_policy(self, weights_path: str) -> None:
        """Load the safetensors checkpoint in directory ``weights_path`` into the live model.

        Raises whatever the loader raises (missing file, shape mismatch); the model may then be half-loaded,
        and the caller must load the previous checkpoint again.
        """
        self.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
        # On CPU, linear layers are re-packed for oneDNN at load time, and the tied lm_head keeps a packed
        # copy of the OLD embedding after a reload (logits off by up to 4.8): pack it again. No-op on GPU,
        # where lm_head's quant method re-reads the shared parameter.
        lm_head = self.model_runner.model.lm_head
        lm_head.quant_method.process_weights_after_loading(lm_head)
