"""AppZoo: the EasyNLP-compatible ``easynlp`` command and the generic parts every application uses.

Applications are plugins: a :class:`appzoo.app.BaseApp` subclass registered under the
``easynlp.appzoo`` entry-point group (AppZoo never imports an application by name).

Modules:

- ``appzoo.args``: :class:`CommonArgs`, EasyNLP's flags parsed once into a typed dataclass.
- ``appzoo.params``: ``--user_defined_parameters`` → an application's parameter dataclass.
- ``appzoo.app`` / ``appzoo.apps``: the application base class; discovery of installed applications.
- ``appzoo.cli``: ``main(argv)`` — ``easynlp`` and ``python -m appzoo``.
- ``appzoo.tables``: tsv schemas, streaming/random-access reads with file/line/column errors,
  base64 images, atomic table writes (local paths, ``file://`` and object-storage URIs).
- ``appzoo.trainer``: a generic training loop with atomic checkpoints and exact resume.
- ``appzoo.launch`` / ``appzoo.distributed``: ``--worker_gpu``/``--worker_count`` relaunch under
  torchrun, process-group helpers and an all-or-nothing sharded predict writer.
"""
