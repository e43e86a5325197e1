"""usseg training: methods (IIC, AC, InfoSeg, PiCIE), nets, losses, datasets and the one training engine.

Runs from the repository checkout: ``python -m training fit --preset iic_cpu --data DIR``. Imports torch and
``usseg_sdk``; never ``export``.
"""
