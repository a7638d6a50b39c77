"""Command lines: ``lame-search`` (search), its NVIDIA commands (tensorrt), the memory budget (info) and the one runner that
every CLI of the project shares (tools). May import all of lame_runtime; only CLIs import it.
"""
