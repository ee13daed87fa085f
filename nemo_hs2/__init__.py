"""nemo_hs2: HelpSteer2 attribute-regression reward models on NeMo-Aligner / Megatron.

Importing this package does not import NeMo; only ``nemo_hs2.models`` and ``nemo_hs2.megatron.train_recipe`` touch the Megatron
stack (through ``nemo_hs2.megatron.compat``), so data, losses, metrics and evaluation stay plain Python.
"""

__version__ = "0.1.0"
