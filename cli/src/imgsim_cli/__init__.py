"""imgsim's command line: ``imgsim index|search|delete|stats|reindex``."""
