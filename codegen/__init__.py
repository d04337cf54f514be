"""ubique.codegen: loop IR -> target code (LLVM IR through llvmlite)."""
