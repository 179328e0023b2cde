"""Reading and writing: platform locations (local, S3, packaged data), export formats, the state folder, the
embedded demo platforms."""
