"""Recipe: the recipe file, with any ``kedro run --params`` overrides, validated."""
