"""Workflows: the only code that reads and writes whole run folders and dataset folders.

One module per command, each a plain function library users call the same way the command line
does: :mod:`~histoxmodal.workflows.tile` (``histoxmodal tile``), :mod:`~.build`
(``histoxmodal build``), :mod:`~.train`, :mod:`~.embed`, :mod:`~.evaluate`, :mod:`~.predict`,
:mod:`~.export`; :mod:`~.run` holds the one :class:`~histoxmodal.workflows.run.Run` every kind
of training run is opened with, and :mod:`~.report` the one HTML report writer. Below this layer
everything takes arrays, tensors, configs and open datasets; above it, ``bench`` and ``cli``.
The functions are also the top-level API: ``hx.tile``, ``hx.build``, ``hx.train``,
``hx.embed``, ``hx.evaluate``, ``hx.predict``, ``hx.Run``.
"""
