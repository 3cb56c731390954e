"""How agents and crawlers find resources: the Bazaar extension, the buyers' OpenAPI document and the discovery
listing. Reads resources and payments; the doors (sales) use it, never the other way round."""
