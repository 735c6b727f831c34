"""The API Keys page: the seed's user interface, served by authproxy under /_authproxy/ui/."""
