"""The histopathology workbook's shared library: everything the notebooks call."""
