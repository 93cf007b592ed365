"""Named UniEmo understanding-model presets (``uniemo.models.list_models()``), one JSON file each."""
