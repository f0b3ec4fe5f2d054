"""The learning loop: from the first labels to suggestions, suspects and measured effort.

One word for the concept: **suggest** (the app's *Suggest* button, ``labeler suggest``,
the ``suggest/`` folder of a workspace and the ``suggest`` method of its suggestions).
``labeler propagate`` is kept as an alias of ``labeler suggest``.

* :mod:`~labeler.loop.suggest`  - the one Suggest step on arrays: out-of-fold calibrated
  predictions, suggestion groups with measured precision
* :mod:`~labeler.loop.suspects` - the rule that flags likely label errors (suspects)
* :mod:`~labeler.loop.vote`     - a trained model's probabilities as a vote in the Suggest step
* :mod:`~labeler.loop.step`     - the Suggest step on a workspace: writes suggestions and
  suspects to ``labels.db`` and ``suggest/``, in the background for the app
* :mod:`~labeler.loop.simulate` - the simulated annotator (``labeler simulate``): plain and
  interactive sessions driven by the same Suggest step
* :mod:`~labeler.loop.effort`   - the effort metric (actions, ``effN``) of a session
* :mod:`~labeler.loop.truth`    - a workspace with known labels, as a session reads it

Nothing heavy is imported here: import the module you need.
"""
