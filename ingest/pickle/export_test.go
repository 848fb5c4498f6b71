package pickle

// OpCost exposes opCost to the tests.
var OpCost = opCost
