fn main() {
    let data = std::fs::read(std::env::args().nth(1).unwrap()).unwrap();
    let case = msn_fuzz::kernels::Case::decode(&data).unwrap();
    let (x, bytes, want, _) = case.build();
    let source = msn_kernels::testing::Source::from_bytes(bytes).unwrap();
    let shapes = source.shapes();
    let tract = source
        .plan(
            &shapes,
            msn_kernels::testing::Plan::With(msn_kernels::Options::none()),
        )
        .unwrap();
    println!("want {:?}", want);
    println!("tract {:?}", tract.run(vec![x.clone()]).unwrap());
    for cpu in msn_fuzz::kernels::levels() {
        let p = source
            .plan(
                &shapes,
                msn_kernels::testing::Plan::With(msn_kernels::Options::all(cpu)),
            )
            .unwrap();
        println!("{cpu} {:?} {:?}", p.ops(), p.run(vec![x.clone()]).unwrap());
    }
}
