"""Named offline models and data (preset:tiny, the shapes teachers, synthetic manifests): their recipes beside their committed files."""
