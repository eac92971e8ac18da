# Writes the tiny ONNX models the datatype tests serve (Debian python3-onnx):
#   fp16.onnx:  x FP16 [-1,4]  -> y = x + x   FP16 [-1,4]
#   bytes.onnx: s BYTES [-1,2] -> t = s       BYTES [-1,2]  (ONNX string tensors)
# Run from this directory: python3 make-models.py
import onnx
from onnx import helper, TensorProto

def save(name, node, tin, tout, dims):
    g = helper.make_graph([node], name,
        [helper.make_tensor_value_info(node.input[0], tin, dims)],
        [helper.make_tensor_value_info(node.output[0], tout, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, name + ".onnx")

save("fp16", helper.make_node("Add", ["x", "x"], ["y"]), TensorProto.FLOAT16, TensorProto.FLOAT16, ["batch", 4])
save("bytes", helper.make_node("Identity", ["s"], ["t"]), TensorProto.STRING, TensorProto.STRING, ["batch", 2])
