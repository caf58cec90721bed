"""Publish HRNet checkpoints (official, timm, mmpretrain) as verified timm repos on the Hugging Face Hub, and the pose /
segmentation checkpoints (official, mmpose, mmseg) as timm_hrnet repos.

Run ``python -m hub_upload --help``; docs/weights.md describes the workflow. The modules, each importing only those
listed after it (no cycles):

* ``hub_upload.batch``: manifests and ``run_batch``; downloads go through ``timm_hrnet.download``.
* ``hub_upload.tasks``: the task entry points by their earlier names (``convert_task_to_dir``, ``verify_task_dir``).
* ``hub_upload.stage``: ``convert``, the one staging path (lock, check, read once, prepare, write, verify, card,
  marker, move into place); ``convert_to_dir`` for classifiers.
* ``hub_upload.verify``: ``verify_dir`` loads a repo as users will and compares it with its source, read again by its
  own path; one hash check, one comparison, for every kind.
* ``hub_upload.classifier`` / ``hub_upload.task_repos``: the kinds of repo (``hub_upload.kinds``): classifiers as timm
  repos; pose and segmentation as timm_hrnet repos whose config.json records the source's layout.
* ``hub_upload.kinds``: the interface between the shared path and the kinds (``Prepared``, ``Comparison``).
* ``hub_upload.source``: a source checkpoint as fetched and read once (``Source``).
* ``hub_upload.report``: ``VerifyReport``, the one report.
* ``hub_upload.reference``: the classifiers' independent references (timm's built-in HRNet, mmpretrain).
* ``hub_upload.model_card``: the README.md model cards.
* ``hub_upload.lock``: one run at a time per output directory (``target_lock``).
* ``hub_upload.safety``: the marker of a staged repo, guarded atomic replacement and recovery after a killed run.
* ``hub_upload.push``: ``push_dir`` uploads a repo directory, pinned to the commit it checked.
* ``hub_upload.names``: repo ids, file names and the other names users give.

The package itself imports nothing heavy, so ``push`` and ``--help`` start without loading torch.
"""
