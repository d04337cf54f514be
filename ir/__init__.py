"""ubique.ir: the graph IR (typed SSA dataflow graph, op registry) and the loop IR."""
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import Graph, Node, TensorType, Value

__all__ = ["DType", "dtype_of", "Graph", "Node", "TensorType", "Value"]
