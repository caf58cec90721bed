"""Publish HRNet checkpoints (official, timm, mmpretrain) as verified timm repos on the Hugging Face Hub.

Run ``python -m hub_upload --help``; docs/weights.md describes the workflow. The modules:

* ``hub_upload.stage``: ``convert_to_dir`` converts one checkpoint into a repo directory, verified before it is moved
  into place.
* ``hub_upload.verify``: ``verify_dir`` compares a repo directory, loaded with ``local-dir:``, with its source.
* ``hub_upload.model_card``: the README.md model card (``CardFacts``, ``Complexity``, ``build_model_card``).
* ``hub_upload.push``: ``push_dir`` uploads a repo directory without clobbering weights already on the Hub.
* ``hub_upload.batch``: manifests, resumable downloads (``fetch``) and ``run_batch``.

The package itself imports nothing heavy, so ``push`` and ``--help`` start without loading torch.
"""
