"""Deep Tree Echo: reservoir computing and large language models behind one OpenAI API."""

__version__ = "0.1.0"
