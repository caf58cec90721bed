"""Publish HRNet checkpoints (official, timm, mmpretrain) as verified timm repos on the Hugging Face Hub, and the
official pose / segmentation checkpoints as timm_hrnet repos.

Run ``python -m hub_upload --help``; docs/weights.md describes the workflow. The modules:

* ``hub_upload.stage``: ``convert_to_dir`` converts one checkpoint into a repo directory, verified before it is moved
  into place.
* ``hub_upload.verify``: ``verify_dir`` compares a repo directory, loaded with ``local-dir:``, with its source run
  through independent code (``hub_upload.reference``: timm's built-in HRNet, or mmpretrain when installed).
* ``hub_upload.tasks``: ``convert_task_to_dir`` / ``verify_task_dir`` for pose and segmentation repos (config.json
  from the model's ``task_config()``, self-consistency verification; ``verify_dir`` hands task repos to it).
* ``hub_upload.safety``: the marker of a staged repo, guarded atomic replacement and recovery after a killed run.
* ``hub_upload.model_card``: the README.md model cards (``CardFacts``, ``Complexity``, ``build_model_card``;
  ``TaskFacts``, ``build_task_model_card``).
* ``hub_upload.push``: ``push_dir`` uploads a repo directory, pinned to the commit it checked.
* ``hub_upload.batch``: manifests and ``run_batch``; downloads go through ``timm_hrnet.download``.
* ``hub_upload.names``: repo ids and the other names users give.

The package itself imports nothing heavy, so ``push`` and ``--help`` start without loading torch.
"""
