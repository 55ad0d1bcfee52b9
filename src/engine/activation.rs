//! Exact (erf) GELU for burn tensors at inference. burn's GELU calls libm's
//! scalar `erff` twice per element (12% of a MiniLM forward); this runs the
//! kernels' vectorized erf GELU (`kernels::math`, |erf error| < 4e-7) over the
//! tensor's buffer. Tensors that carry gradients keep burn's differentiable
//! op, so training sees the same function.

use burn::tensor::activation;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::kernels::math::gelu_inplace;

pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.is_require_grad() {
        return activation::gelu(x);
    }
    let (shape, device) = (x.shape(), x.device());
    let mut v = x
        .into_data()
        .try_into_vec::<f32>()
        .expect("activations are f32");
    v.par_chunks_mut(16 * 1024).for_each(gelu_inplace);
    Tensor::from_data(TensorData::new(v, shape), &device)
}
