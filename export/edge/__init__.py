"""What runs on the target device: modules that need only numpy and the target's runtime (onnxruntime, OpenVINO or
TensorRT), never torch or the rest of this project. The bundle ships them flat beside the models, so each module imports
its siblings either as ``export.edge.<name>`` (in the project) or as ``<name>`` (in the bundle folder).

- :mod:`.timing`: the one interleaved timer (paired speedups, latency tables, the target probe).
- :mod:`.sessions`: open an ONNX file or engine on a named runtime; the runtime's and the device's identity.
- :mod:`.target_probe`: measure a probe pack on the target → ``target.json`` (``python target_probe.py``).
- :mod:`.validate_on_device`: accuracy and paired latency of the bundle's artifacts on the target → ``result.json``.
"""
